"""Grad-CAM: layer choice per architecture, heatmap shape and range, localisation, and ``crossderm explain``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from crossderm.cli import main
from crossderm.fsutil import sha256_file
from crossderm.imaging import load_image
from crossderm.labels import CLASSES
from crossderm.models.card import ModelCard, write_card
from crossderm.models.factory import count_parameters, create_model, normalisation
from crossderm.predict.ensemble import Ensemble, FoldModel
from crossderm.predict.gradcam import DISPLAY_SIZE, gradcam_overlay, target_layer_names


def synthetic_image(synth_raw: Path, index: int = 0) -> Path:
    return sorted((synth_raw / "ISIC2019" / "ISIC_2019_Training_Input").glob("*.jpg"))[index]


def untrained_run(root: Path, model_name: str, image_size: int, folds: int) -> Path:
    """A run folder of randomly initialised folds in the format training writes (model.json + safetensors)."""
    for fold in range(folds):
        torch.manual_seed(fold)
        model = create_model(model_name)
        fold_dir = root / f"fold_{fold}"
        fold_dir.mkdir(parents=True)
        save_file(model.state_dict(), fold_dir / "best.safetensors")
        mean, std = normalisation(model)
        write_card(fold_dir / "model.json", ModelCard(
            experiment="untrained", fold=fold, model=model_name, classes=list(CLASSES), image_size=image_size,
            mean=list(mean), std=list(std), tta=1, parameters=count_parameters(model), weights="best.safetensors",
            sha256=sha256_file(fold_dir / "best.safetensors"), best_epoch=0, val_score=0.0,
        ))
    return root


def assert_heatmap(heatmap: np.ndarray, shape: tuple[int, int]) -> None:
    assert heatmap.shape == shape
    assert heatmap.dtype == np.float32
    assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0
    assert heatmap.max() - heatmap.min() > 0.5 and heatmap.std() > 0.05, "heatmap is (nearly) constant"


@pytest.mark.parametrize(
    ("name", "size", "expected"),
    [
        ("convnext_tiny", 224, ["stages.3"]),
        ("convnext_tiny", 32, ["stages.1"]),
        ("test_efficientnet", 32, ["blocks.2"]),
        ("crossderm_fusion_test", 224, ["backbones.0.stages.3", "backbones.1.blocks.4"]),
        ("crossderm_fusion_test", 64, ["backbones.0.stages.2", "backbones.1.blocks.3"]),
    ],
)
def test_target_layer_is_the_deepest_stage_with_a_real_grid(name: str, size: int, expected: list[str]) -> None:
    model = create_model(name)
    assert target_layer_names(model, size) == expected
    for layer in expected:
        model.get_submodule(layer)


def test_trained_run_heatmap_and_overlay(synth_run: Path, synth_raw: Path) -> None:
    ensemble = Ensemble(synth_run)
    path = synthetic_image(synth_raw)
    pixels = np.array(load_image(path, ensemble.image_size))
    explanation = gradcam_overlay(ensemble, pixels, display=load_image(path, DISPLAY_SIZE))
    assert_heatmap(explanation.heatmap, (ensemble.image_size, ensemble.image_size))
    assert explanation.overlay.size == (DISPLAY_SIZE, DISPLAY_SIZE) and explanation.overlay.mode == "RGB"
    predicted = ensemble.predict(pixels[None], views=ensemble.card.tta)[0].argmax()
    assert explanation.class_name == CLASSES[predicted]
    for member in ensemble.members:  # hooks removed, weights untouched: no gradients kept, flags restored
        assert all(p.requires_grad and p.grad is None for p in member.model.parameters())
        assert not any(m._forward_hooks for m in member.model.modules())
    wide = np.array(Image.fromarray(pixels).resize((48, 40)))
    assert_heatmap(gradcam_overlay(ensemble, wide).heatmap, (40, 48))


@pytest.mark.parametrize(("name", "size", "folds"), [("test_convnext", 64, 1), ("crossderm_fusion_test", 64, 2),
                                                      ("convnext_tiny", 64, 1)])
def test_project_architectures(tmp_path: Path, synth_raw: Path, name: str, size: int, folds: int) -> None:
    ensemble = Ensemble(untrained_run(tmp_path / name, name, size, folds))
    pixels = np.array(load_image(synthetic_image(synth_raw, 1), size))
    explanation = gradcam_overlay(ensemble, pixels, class_index=CLASSES.index("mel"))
    assert_heatmap(explanation.heatmap, (size, size))
    assert explanation.class_name == "mel" and explanation.overlay.size == (size, size)


class Spotlight(nn.Module):
    """Every logit is the mean brightness of the image: its Grad-CAM must cover the bright region and nothing else."""

    feature_info = [{"module": "stages.0", "reduction": 4, "num_chs": 3}]

    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.Sequential(nn.AvgPool2d(4))
        self.head = nn.Linear(1, len(CLASSES))
        nn.init.ones_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(x).mean(dim=(1, 2, 3)).unsqueeze(1))


def test_heatmap_follows_the_salient_region(synth_run: Path) -> None:
    ensemble = Ensemble(synth_run)
    ensemble.members = [FoldModel(m.card, Spotlight().eval()) for m in ensemble.members[:2]]
    size = ensemble.image_size
    patch = size // 4
    top_right = np.full((size, size, 3), 30, dtype=np.uint8)
    top_right[:patch, -patch:] = 230
    bottom_left = np.ascontiguousarray(np.rot90(top_right, 2))
    first = gradcam_overlay(ensemble, top_right, class_index=0).heatmap
    moved = gradcam_overlay(ensemble, bottom_left, class_index=0).heatmap
    assert first[:patch, -patch:].mean() > 0.6 and first[-patch:, :patch].max() < 0.05
    assert moved[-patch:, :patch].mean() > 0.6 and moved[:patch, -patch:].max() < 0.05
    np.testing.assert_allclose(moved, np.rot90(first, 2), atol=0.02)


def test_explain_cli(synth_run: Path, synth_raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = [synthetic_image(synth_raw, 0), synthetic_image(synth_raw, 2)]
    out = tmp_path / "cams"
    assert main(["explain", "--model", str(synth_run), *map(str, images), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for path, line in zip(images, lines, strict=True):
        overlay = out / f"{path.stem}_gradcam.png"
        with Image.open(overlay) as image:
            assert image.format == "PNG" and image.size == (DISPLAY_SIZE, DISPLAY_SIZE)
        predicted = line.split(": ")[1].split(" ")[0]
        assert line.startswith(path.stem) and predicted in CLASSES and str(overlay) in line

    assert main(["explain", "--model", str(synth_run), str(images[0]), "--out", str(out), "--class", "df"]) == 0
    assert "Grad-CAM for df" in capsys.readouterr().out

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(images[0].read_bytes()[:200])
    assert main(["explain", "--model", str(synth_run), str(broken), "--out", str(out)]) == 2
    assert "broken.jpg: cannot read the image header (OSError: Truncated File Read)" in capsys.readouterr().err
    assert main(["explain", "--model", str(synth_run), str(images[0]), str(images[0]), "--out", str(out)]) == 2
    assert "share the image id" in capsys.readouterr().err
