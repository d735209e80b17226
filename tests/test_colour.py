"""Shades of Gray colour constancy: equal to a direct per-image computation, in the cache and at inference."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from crossderm.cli import main
from crossderm.colour import apply_color_constancy, illuminants, shades_of_gray
from crossderm.datafolder import load_dataset


def sog_direct(image: np.ndarray, p: float = 6.0) -> np.ndarray:
    """The textbook recipe written out pixel-sum by pixel-sum, one channel at a time."""
    height, width, _ = image.shape
    estimate = []
    for c in range(3):
        total = sum(float(v) ** p for v in image[:, :, c].ravel())
        estimate.append((total / (height * width)) ** (1 / p))
    norm = math.sqrt(sum(e * e for e in estimate))
    out = np.empty_like(image)
    for c in range(3):
        gain = 1.0 / (estimate[c] / norm * math.sqrt(3))
        out[:, :, c] = np.clip(np.rint(image[:, :, c].astype(np.float64) * gain), 0, 255)
    return out


def test_equals_the_direct_computation_per_image() -> None:
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, size=(3, 9, 7, 3), dtype=np.uint8)
    batch[1, ..., 0] //= 3  # a strong colour cast in one image
    corrected = shades_of_gray(batch)
    for image, got in zip(batch, corrected, strict=True):
        np.testing.assert_array_equal(got, sog_direct(image))
    np.testing.assert_array_equal(apply_color_constancy(batch, "none"), batch)
    with pytest.raises(ValueError, match="unknown colour constancy"):
        apply_color_constancy(batch, "grey_world")


def test_removes_a_cast_and_handles_black_images() -> None:
    rng = np.random.default_rng(1)
    neutral = rng.integers(60, 200, size=(16, 16, 3)).astype(np.uint8)
    cast = np.clip(neutral * np.array([1.25, 1.0, 0.7]), 0, 255).astype(np.uint8)
    assert np.abs(illuminants(shades_of_gray(cast)) - 1 / np.sqrt(3)).max() < 0.01  # corrected: grey illuminant
    black = np.zeros((4, 4, 3), dtype=np.uint8)
    np.testing.assert_array_equal(shades_of_gray(black), black)


def test_prepare_writes_a_second_cache_and_training_uses_it(synth_raw: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert main(["prepare", "--ham", str(synth_raw / "HAM10000"), "--isic", str(synth_raw / "ISIC2019"),
                 "--out", str(data), "--image-size", "32", "--workers", "1"]) == 0
    assert main(["prepare", "--out", str(data), "--color-constancy", "sog6"]) == 0  # added to the existing one
    prepared = load_dataset(data)
    plain, sog = prepared.open_cache(), prepared.open_cache("sog6")
    np.testing.assert_array_equal(sog[:50], shades_of_gray(plain[:50]))
    assert json.loads((data / "dataset.json").read_text())["caches"] == {"sog6": "images_32_sog6.npy"}
    out = tmp_path / "run"
    overrides = ["model=test_efficientnet", "epochs=1", "batch_size=32", "channels_last=false",
                 "color_constancy=sog6", "tta=1"]
    assert main(["cv", "--config", "demo_b_joint", "--data", str(data), "--out", str(out), "--fold", "0",
                 *[f"--set={o}" for o in overrides]]) == 0
    card = json.loads((out / "fold_0" / "model.json").read_text())
    assert card["color_constancy"] == "sog6"

    from crossderm.predict.ensemble import Ensemble

    ensemble = Ensemble(out, device="cpu")
    pixels = np.ascontiguousarray(plain[:4])
    from_plain = ensemble.preprocess(pixels)  # the card says sog6: corrected at inference as in the cache
    ensemble.card = ensemble.card.model_copy(update={"color_constancy": "none"})
    from_corrected = ensemble.preprocess(shades_of_gray(pixels))
    np.testing.assert_allclose(from_plain.numpy(), from_corrected.numpy(), atol=0)


def test_missing_variant_is_a_clear_error(synth_prepared: Path, tmp_path: Path, capsys) -> None:
    assert main(["cv", "--config", "demo_b_joint", "--data", str(synth_prepared), "--out", str(tmp_path / "r"),
                 "--set", "color_constancy=sog6"]) == 2
    err = capsys.readouterr().err
    assert "has no sog6 image cache" in err and "--color-constancy sog6" in err
