"""Calibration: expected calibration error, reliability curves and temperature scaling.

Temperature scaling here acts on the log of the (TTA- and fold-averaged) probabilities,
``p_T ∝ p ** (1 / T)``, which equals classic logit scaling for a single view and stays well defined for
averaged views. ``T`` is fitted per fold on that fold's *inner validation* predictions only, so the
out-of-fold test images never influence it; its effect is reported as ECE before/after on the pooled
out-of-fold predictions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from crossderm.errors import CrossdermError
from crossderm.fsutil import atomic_write_json
from crossderm.labels import CLASSES, label_indices
from crossderm.runfolder import RunFolder

N_BINS = 15
EPS = 1e-12


def reliability_curve(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> pd.DataFrame:
    """Per equal-width confidence bin: images, mean confidence and accuracy of the top-1 prediction."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    mean_confidence = np.bincount(bins, weights=confidence, minlength=n_bins) / np.maximum(count, 1)
    accuracy = np.bincount(bins, weights=correct, minlength=n_bins) / np.maximum(count, 1)
    edges = np.arange(n_bins) / n_bins
    return pd.DataFrame(
        {
            "bin_low": edges,
            "bin_high": edges + 1 / n_bins,
            "count": count,
            "confidence": mean_confidence,
            "accuracy": accuracy,
        }
    )


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> float:
    """Top-label ECE: the count-weighted mean |accuracy - confidence| over confidence bins."""
    curve = reliability_curve(probs, labels, n_bins)
    return float((curve["count"] * (curve["accuracy"] - curve["confidence"]).abs()).sum() / max(len(labels), 1))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    scaled = np.log(np.clip(probs, EPS, 1.0)) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    out = np.exp(scaled)
    return out / out.sum(axis=1, keepdims=True)


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``labels`` (bounded search in [0.05, 20])."""
    from scipy.optimize import minimize_scalar

    if len(labels) == 0:
        raise CrossdermError("cannot fit a temperature on an empty validation set")

    def nll(log_t: float) -> float:
        scaled = apply_temperature(probs, float(np.exp(log_t)))
        return float(-np.log(np.clip(scaled[np.arange(len(labels)), labels], EPS, 1.0)).mean())

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def _probs_and_labels(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return frame[list(CLASSES)].to_numpy(dtype=np.float64), label_indices(frame["label"])


def calibrate_run(run_dir: Path) -> dict:
    """Fit one temperature per fold on its validation predictions; ECE before/after per source on the OOF set.

    Rows that are a mean over several fold models (external sources, the site matrix: ``fold`` = -1) have no
    single temperature; they are counted and left out of the ECE. Writes ``RUN_DIR/calibration.json`` (read by
    ``crossderm predict --calibrated`` and the report).
    """
    run = RunFolder(run_dir)
    oof = pd.read_csv(run.oof_predictions, dtype={"image_id": str})
    temperatures: dict[str, float] = {}
    for fold in run.expected_folds():
        val_path = run.fold(fold).val_predictions
        if not val_path.is_file():
            raise CrossdermError(f"{val_path}: missing (needed to fit the temperature of fold {fold})")
        temperatures[str(fold)] = fit_temperature(*_probs_and_labels(pd.read_csv(val_path, dtype={"image_id": str})))
    single = oof[oof["fold"] >= 0]
    calibrated = single.copy()
    for fold, rows in single.groupby("fold"):
        calibrated.loc[rows.index, list(CLASSES)] = apply_temperature(
            _probs_and_labels(rows)[0], temperatures[str(fold)]
        )
    per_source = {}
    for source in sorted(single["source"].unique()):
        mask = (single["source"] == source).to_numpy()
        before, labels = _probs_and_labels(single[mask])
        after, _ = _probs_and_labels(calibrated[mask])
        per_source[source] = {
            "n": int(mask.sum()),
            "ece_before": expected_calibration_error(before, labels),
            "ece_after": expected_calibration_error(after, labels),
            "reliability_before": reliability_curve(before, labels).to_dict(orient="list"),
            "reliability_after": reliability_curve(after, labels).to_dict(orient="list"),
        }
    result = {
        "method": "temperature scaling of log-probabilities, fitted per fold on the inner validation split",
        "n_bins": N_BINS,
        "temperature": temperatures,
        "sources": per_source,
        "ensembled_rows_not_calibrated": int(len(oof) - len(single)),
    }
    atomic_write_json(run.calibration, result)
    return result
