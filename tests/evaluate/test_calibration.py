"""ECE, temperature scaling and the per-fold calibration of a run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crossderm.evaluate.calibration import apply_temperature, expected_calibration_error, fit_temperature


def _calibrated_sample(n: int = 20000, k: int = 7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities that are calibrated by construction: labels are drawn from them."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(k, 0.5), size=n)
    labels = np.array([rng.choice(k, p=p) for p in probs])
    return probs, labels


def _ece_by_loop(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    total = 0.0
    confidence, predicted = probs.max(1), probs.argmax(1)
    for b in range(n_bins):
        low, high = b / n_bins, (b + 1) / n_bins
        inside = (confidence >= low) & ((confidence < high) if b < n_bins - 1 else (confidence <= high))
        if inside.any():
            total += inside.sum() * abs((predicted[inside] == labels[inside]).mean() - confidence[inside].mean())
    return total / len(labels)


def test_ece_matches_a_plain_loop() -> None:
    probs, labels = _calibrated_sample(3000)
    sharp = apply_temperature(probs, 0.5)
    assert expected_calibration_error(sharp, labels) == pytest.approx(_ece_by_loop(sharp, labels), abs=1e-12)


def test_temperature_recovers_overconfidence() -> None:
    probs, labels = _calibrated_sample()
    assert expected_calibration_error(probs, labels) < 0.02
    overconfident = apply_temperature(probs, 0.5)  # p ** 2, renormalised
    assert expected_calibration_error(overconfident, labels) > 0.08
    temperature = fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(2.0, rel=0.1)
    assert expected_calibration_error(apply_temperature(overconfident, temperature), labels) < 0.02


def test_temperature_one_is_identity() -> None:
    probs, _ = _calibrated_sample(100)
    assert np.allclose(apply_temperature(probs, 1.0), probs, atol=1e-12)


def test_run_calibration_is_fitted_per_fold_on_validation(synth_run: Path) -> None:
    calibration = json.loads((synth_run / "calibration.json").read_text())
    assert sorted(calibration["temperature"]) == ["0", "1", "2", "3", "4"]
    assert all(0.05 <= t <= 20 for t in calibration["temperature"].values())
    for source in ("ham", "isic"):
        info = calibration["sources"][source]
        assert 0 <= info["ece_after"] <= 1 and 0 <= info["ece_before"] <= 1
        assert sum(info["reliability_before"]["count"]) == info["n"]


def test_calibrated_ensemble_applies_the_fold_temperatures(synth_run: Path, synth_prepared: Path) -> None:
    from crossderm.predict.ensemble import Ensemble

    pixels = np.load(synth_prepared / "images_32.npy", mmap_mode="r")[:8]
    raw = Ensemble(synth_run, folds=[2]).predict(np.array(pixels))
    calibrated = Ensemble(synth_run, folds=[2], calibrated=True)
    temperature = json.loads((synth_run / "calibration.json").read_text())["temperature"]["2"]
    assert calibrated.temperatures == [temperature]
    assert np.allclose(calibrated.predict(np.array(pixels)), apply_temperature(raw, temperature), atol=1e-6)
