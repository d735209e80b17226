"""A trained run's fold ensemble for inference: fold models from safetensors + JSON, never pickled code.

Each ``fold_<k>/model.json`` (:mod:`crossderm.models.card`) names the architecture, the classes, the input size
and normalisation, and the sha256 of its weights file. A card with missing or nonsensical fields, weights whose
hash differs, or tensors that do not fit the architecture are refused with a one-line message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from crossderm.errors import CrossdermError
from crossderm.evaluate.calibration import apply_temperature
from crossderm.models.card import ModelCard, read_card, verify_weights
from crossderm.models.factory import create_model
from crossderm.models.preprocess import Normalise, to_unit_float
from crossderm.models.tta import predict_proba_tta
from crossderm.runfolder import FoldFolder, RunFolder


@dataclass
class FoldModel:
    card: ModelCard
    model: nn.Module


def load_fold(folder: FoldFolder, device: torch.device) -> FoldModel:
    """One fold's best weights, integrity-checked against its model card."""
    card = read_card(folder.model_card)
    weights = verify_weights(card, folder.model_card)
    model = create_model(card.model, num_classes=len(card.classes))
    try:
        model.load_state_dict(load_file(weights, device="cpu"), strict=True)
    except (SafetensorError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0]
        raise CrossdermError(f"{weights}: does not fit {card.model} ({reason})") from None
    return FoldModel(card=card, model=model.to(device).eval())


def finished_folds(run_dir: Path, folds: list[int] | None = None) -> list[FoldFolder]:
    """The folds of ``run_dir`` that have a model card (all, or the ``folds`` asked for)."""
    run = RunFolder(run_dir).require()
    found = [f for f in run.folds() if f.model_card.is_file()]
    if folds is not None:
        missing = sorted(set(folds) - {f.fold for f in found})
        if missing:
            raise CrossdermError(f"{run_dir}: no finished {', '.join(f'fold_{k}' for k in missing)}")
        found = [f for f in found if f.fold in set(folds)]
    if not found:
        raise CrossdermError(f"{run_dir}: no finished folds (fold_<k>/model.json)")
    return found


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
        self.members = [load_fold(f, self.device) for f in finished_folds(self.run_dir, folds)]
        cards = [m.card for m in self.members]
        for key in ("model", "image_size", "mean", "std"):
            if len({str(getattr(c, key)) for c in cards}) != 1:
                raise CrossdermError(f"{self.run_dir}: folds disagree on {key}; cannot ensemble them")
        self.card = cards[0]
        self.image_size: int = self.card.image_size
        self.folds = [c.fold for c in cards]
        self.normalise = Normalise(tuple(self.card.mean), tuple(self.card.std))
        self.temperatures = self._temperatures() if calibrated else [1.0] * len(self.members)

    def _temperatures(self) -> list[float]:
        """Per-fold temperatures fitted on inner validation (``calibration.json``, written by ``crossderm pool``)."""
        run = RunFolder(self.run_dir)
        fitted = run.read_calibration(required=True).get("temperature", {})
        missing = [f for f in self.folds if str(f) not in fitted]
        if missing:
            raise CrossdermError(f"{run.calibration}: no temperature for fold(s) {missing}")
        return [float(fitted[str(f)]) for f in self.folds]

    def preprocess(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) from :func:`crossderm.imaging.load_image` -> normalised float batch."""
        return self.normalise(to_unit_float(torch.from_numpy(np.ascontiguousarray(pixels)), self.device))

    def predict(self, pixels: np.ndarray, views: int = 4) -> np.ndarray:
        """Class probabilities (N, 7): mean over fold models of the mean over TTA views."""
        images = self.preprocess(pixels)
        bf16 = self.device.type == "cuda"
        per_fold = [
            apply_temperature(predict_proba_tta(m.model, images, views, bf16).cpu().numpy().astype(np.float64), t)
            for m, t in zip(self.members, self.temperatures, strict=True)
        ]
        return np.mean(per_fold, axis=0)
