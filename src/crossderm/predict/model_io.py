"""Loading a trained run for inference: fold models from safetensors + JSON, never pickled code.

Each ``RUN_DIR/fold_<k>/model.json`` (the model card written when the fold finished) names the
architecture, the classes, the input size and normalisation, and the sha256 of its weights file. A weights
file whose hash differs, or whose tensors do not fit the architecture, is refused with a clear message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from crossderm.errors import CrossdermError
from crossderm.evaluate.calibration import apply_temperature
from crossderm.fsutil import read_json
from crossderm.labels import CLASSES
from crossderm.predict.tta import predict_logits_tta
from crossderm.train.engine import MODEL_CARD_FORMAT, sha256_file
from crossderm.train.models import create_model


@dataclass
class FoldModel:
    card: dict
    model: nn.Module


def read_card(fold_dir: Path) -> dict:
    path = fold_dir / "model.json"
    card = read_json(path, "is this fold finished? run `crossderm cv` to completion")
    if card.get("format") != MODEL_CARD_FORMAT:
        raise CrossdermError(f"{path}: unsupported model card format {card.get('format')!r}")
    if card.get("classes") != list(CLASSES):
        raise CrossdermError(f"{path}: classes {card.get('classes')} differ from {list(CLASSES)}")
    return card


def load_fold(fold_dir: Path, device: torch.device) -> FoldModel:
    """One fold's best weights, integrity-checked against its model card."""
    card = read_card(fold_dir)
    weights = fold_dir / card["weights"]
    if not weights.is_file():
        raise CrossdermError(f"{weights}: weights file missing")
    if sha256_file(weights) != card["sha256"]:
        raise CrossdermError(
            f"{weights}: sha256 does not match {fold_dir / 'model.json'} (corrupt or tampered); refusing it"
        )
    model = create_model(card["model"], num_classes=len(card["classes"]))
    try:
        model.load_state_dict(load_file(weights, device="cpu"), strict=True)
    except (SafetensorError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0]
        raise CrossdermError(f"{weights}: does not fit {card['model']} ({reason})") from None
    return FoldModel(card=card, model=model.to(device).eval())


def fold_dirs(run_dir: Path, folds: list[int] | None = None) -> list[Path]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CrossdermError(f"{run_dir}: no such run folder")
    found = sorted(run_dir.glob("fold_*/model.json"), key=lambda p: int(p.parent.name.split("_")[1]))
    dirs = [p.parent for p in found]
    if folds is not None:
        wanted = {f"fold_{k}" for k in folds}
        missing = wanted - {d.name for d in dirs}
        if missing:
            raise CrossdermError(f"{run_dir}: no finished {', '.join(sorted(missing))}")
        dirs = [d for d in dirs if d.name in wanted]
    if not dirs:
        raise CrossdermError(f"{run_dir}: no finished folds (fold_<k>/model.json)")
    return dirs


class Ensemble:
    """The fold models of a run; probabilities are averaged over folds and TTA views."""

    def __init__(
        self,
        run_dir: Path,
        folds: list[int] | None = None,
        device: str | torch.device = "cpu",
        calibrated: bool = False,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        self.members = [load_fold(d, self.device) for d in fold_dirs(self.run_dir, folds)]
        cards = [m.card for m in self.members]
        for key in ("model", "image_size", "mean", "std"):
            if len({json.dumps(c[key]) for c in cards}) != 1:
                raise CrossdermError(f"{self.run_dir}: folds disagree on {key}; cannot ensemble them")
        self.card = cards[0]
        self.image_size: int = self.card["image_size"]
        self.folds = [c["fold"] for c in cards]
        self.temperatures = self._temperatures() if calibrated else [1.0] * len(self.members)

    def _temperatures(self) -> list[float]:
        """Per-fold temperatures fitted on inner validation (``calibration.json``, written by ``crossderm pool``)."""
        path = self.run_dir / "calibration.json"
        fitted = read_json(path, f"run `crossderm pool {self.run_dir}` to fit the temperatures").get("temperature", {})
        missing = [f for f in self.folds if str(f) not in fitted]
        if missing:
            raise CrossdermError(f"{path}: no temperature for fold(s) {missing}")
        return [float(fitted[str(f)]) for f in self.folds]

    def preprocess(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) from :func:`crossderm.prepare.cache.load_image` -> normalised float batch."""
        images = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        mean = torch.tensor(self.card["mean"], device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.card["std"], device=self.device).view(1, 3, 1, 1)
        return (images - mean) / std

    def predict(self, pixels: np.ndarray, views: int = 4) -> np.ndarray:
        """Class probabilities (N, 7): mean over fold models of the mean over TTA views."""
        images = self.preprocess(pixels)
        amp = self.device.type == "cuda"
        per_fold = [
            apply_temperature(predict_logits_tta(m.model, images, views, amp).cpu().numpy().astype(np.float64), t)
            for m, t in zip(self.members, self.temperatures, strict=True)
        ]
        return np.mean(per_fold, axis=0)
