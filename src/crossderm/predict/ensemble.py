"""A trained run's fold ensemble for inference: fold models from safetensors + JSON, never pickled code.

Each ``fold_<k>/model.json`` (:mod:`crossderm.models.card`) names the architecture, the classes, the input size
and normalisation, and the sha256 of its weights file. A card with missing or nonsensical fields, weights whose
hash differs, or tensors that do not fit the architecture are refused with a one-line message.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from crossderm.colour import apply_color_constancy
from crossderm.errors import CrossdermError
from crossderm.evaluate.calibration import apply_temperature
from crossderm.fsutil import lock_holder, sha256_file
from crossderm.models.card import ModelCard, read_card, verify_weights
from crossderm.models.factory import check_model_name, create_model
from crossderm.models.ood import MahalanobisStatistics, msp_score, ood_scores
from crossderm.models.preprocess import Normalise, to_unit_float
from crossderm.models.tta import Inputs, tta_outputs
from crossderm.runfolder import FoldFolder, RunFolder


@dataclass
class FoldModel:
    card: ModelCard
    model: nn.Module
    ood: MahalanobisStatistics | None = None


def load_fold(folder: FoldFolder, device: torch.device) -> FoldModel:
    """One fold's best weights, integrity-checked against its model card."""
    card = read_card(folder.model_card)
    weights = verify_weights(card, folder.model_card)
    try:
        check_model_name(card.model)
    except CrossdermError as exc:
        raise CrossdermError(f"{folder.model_card}: {exc}") from None
    model = create_model(card.model, num_classes=len(card.classes), metadata=card.metadata)
    try:
        model.load_state_dict(load_file(weights, device="cpu"), strict=True)
    except (SafetensorError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0]
        raise CrossdermError(f"{weights}: does not fit {card.model} ({reason})") from None
    ood = None
    if card.ood_statistics is not None:
        path = folder.path / card.ood_statistics
        if not path.is_file() or sha256_file(path) != card.ood_sha256:
            raise CrossdermError(f"{path}: missing, or its sha256 does not match {folder.model_card}; refusing it")
        try:
            ood = MahalanobisStatistics.load(path)
        except (SafetensorError, KeyError, OSError) as exc:
            raise CrossdermError(f"{path}: not OOD statistics ({' '.join(str(exc).split())})") from None
    return FoldModel(card=card, model=model.to(device).eval(), ood=ood)


def finished_folds(run_dir: Path, folds: list[int] | None = None) -> list[FoldFolder]:
    """The folds of ``run_dir`` that have a model card (all, or the ``folds`` asked for)."""
    run = RunFolder(run_dir).require()
    found = [f for f in run.folds() if f.model_card.is_file()]
    training = {f.fold: holder for f in run.folds() if (holder := lock_holder(f.path)) and not f.model_card.is_file()}
    if training:
        warnings.warn(f"{run_dir}: fold(s) {', '.join(map(str, training))} still training "
                      f"({next(iter(training.values()))}); using the finished fold(s) only", stacklevel=2)
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
        for key in ("model", "image_size", "mean", "std", "color_constancy", "metadata"):
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
        """uint8 (N, H, W, 3) from :func:`crossderm.imaging.load_image` -> the model's colour constancy ->
        normalised float batch."""
        pixels = apply_color_constancy(np.ascontiguousarray(pixels), self.card.color_constancy)
        return self.normalise(to_unit_float(torch.from_numpy(np.array(pixels)), self.device))

    @property
    def needs_metadata(self) -> bool:
        return self.card.metadata

    def inputs(self, pixels: np.ndarray, metadata: np.ndarray | None) -> Inputs:
        """The model's input: images, plus the encoded metadata (crossderm.patient) for a metadata model."""
        images = self.preprocess(pixels)
        if not self.needs_metadata:
            return images
        if metadata is None:
            raise CrossdermError(f"{self.run_dir}: this model uses patient metadata (age, sex, anatom_site); give it, "
                                 "or ask for imputation (every field missing)")
        return images, torch.as_tensor(np.asarray(metadata, dtype=np.float32), device=self.device)

    def predict_with_ood(
        self, pixels: np.ndarray, views: int = 4, metadata: np.ndarray | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Class probabilities (N, 7), the mean over fold models of the mean over TTA views, and the OOD scores
        (crossderm.models.ood): MSP of those probabilities, energy and Mahalanobis averaged over the folds."""
        inputs = self.inputs(pixels, metadata)
        bf16 = self.device.type == "cuda"
        probs, energy, distance = [], [], []
        for member, temperature in zip(self.members, self.temperatures, strict=True):
            out = tta_outputs(member.model, inputs, views, bf16)
            scores = ood_scores(out.probs.cpu().numpy(), out.logits.cpu().numpy(), out.features.cpu().numpy(),
                                member.ood)
            probs.append(apply_temperature(out.probs.cpu().numpy().astype(np.float64), temperature))
            energy.append(scores["ood_energy"])
            distance.append(scores["ood_mahalanobis"])
        mean = np.mean(probs, axis=0)
        return mean, {"ood_msp": msp_score(mean), "ood_energy": np.mean(energy, axis=0),
                      "ood_mahalanobis": np.mean(distance, axis=0)}

    def predict(self, pixels: np.ndarray, views: int = 4, metadata: np.ndarray | None = None) -> np.ndarray:
        """Class probabilities (N, 7): mean over fold models of the mean over TTA views."""
        return self.predict_with_ood(pixels, views, metadata)[0]
