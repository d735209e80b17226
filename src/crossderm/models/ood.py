"""Out-of-distribution scores of a prediction: higher = the image looks less like the training data.

- ``ood_msp``: 1 - maximum softmax probability (Hendrycks & Gimpel 2017), from the TTA probabilities;
- ``ood_energy``: the negative log-sum-exp of the identity view's logits (Liu et al. 2020);
- ``ood_mahalanobis``: the smallest Mahalanobis distance of the identity view's pre-logit features to a class
  mean, with one shared (Ledoit-Wolf shrunk) covariance fitted on the fold's training images (Lee et al.
  2018), divided by the 95th percentile of that distance on the fold's inner-validation images: 1.0 = as far
  as the farthest 5 % of validation images, so scores of different folds share one scale.

Each fold stores its statistics in ``fold_<k>/ood.safetensors`` (class means, precision, threshold), named
with its sha256 in the model card; ``predict`` and ``serve`` average the fold scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save

from crossderm.fsutil import atomic_write_bytes

OOD_FILE = "ood.safetensors"
THRESHOLD_QUANTILE = 0.95


def msp_score(probs: np.ndarray) -> np.ndarray:
    return 1.0 - np.asarray(probs, dtype=np.float64).max(axis=1)


def energy_score(logits: np.ndarray) -> np.ndarray:
    return -torch.logsumexp(torch.as_tensor(np.asarray(logits, dtype=np.float64)), dim=1).numpy()


@dataclass(frozen=True)
class MahalanobisStatistics:
    means: np.ndarray  # (K, D) per class present in training; absent classes are left out
    precision: np.ndarray  # (D, D)
    threshold: float = 1.0

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray) -> MahalanobisStatistics:
        """Class means and the shared covariance of class-centred features (Ledoit-Wolf shrinkage keeps it
        invertible when the feature dimension is near the number of images)."""
        from sklearn.covariance import LedoitWolf

        features = np.asarray(features, dtype=np.float64)
        classes = np.unique(labels)
        means = np.stack([features[labels == c].mean(axis=0) for c in classes])
        centred = features - means[np.searchsorted(classes, labels)]
        return cls(means, LedoitWolf(assume_centered=True).fit(centred).precision_)

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Smallest squared Mahalanobis distance to a class mean, (N,)."""
        x = torch.as_tensor(np.asarray(features, dtype=np.float64))
        diff = x[:, None, :] - torch.as_tensor(self.means)[None]  # (N, K, D)
        return torch.einsum("nkd,de,nke->nk", diff, torch.as_tensor(self.precision), diff).min(dim=1).values.numpy()

    def calibrated(self, validation_features: np.ndarray) -> MahalanobisStatistics:
        """The same statistics with the threshold set on the inner-validation images' distances."""
        threshold = float(np.quantile(self.distance(validation_features), THRESHOLD_QUANTILE))
        return MahalanobisStatistics(self.means, self.precision, max(threshold, 1e-12))

    def score(self, features: np.ndarray) -> np.ndarray:
        return self.distance(features) / self.threshold

    def save(self, path: Path) -> None:
        tensors = {"means": torch.as_tensor(self.means), "precision": torch.as_tensor(self.precision),
                   "threshold": torch.tensor([self.threshold], dtype=torch.float64)}
        atomic_write_bytes(path, save(tensors))

    @classmethod
    def load(cls, path: Path) -> MahalanobisStatistics:
        tensors = load_file(path)
        return cls(tensors["means"].numpy(), tensors["precision"].numpy(), float(tensors["threshold"][0]))


def ood_scores(probs: np.ndarray, logits: np.ndarray, features: np.ndarray,
               statistics: MahalanobisStatistics | None) -> dict[str, np.ndarray]:
    """The three scores of a batch of predictions (Mahalanobis NaN without statistics)."""
    mahalanobis = statistics.score(features) if statistics is not None else np.full(len(probs), np.nan)
    return {"ood_msp": msp_score(probs), "ood_energy": energy_score(logits), "ood_mahalanobis": mahalanobis}
