"""Model presets: parameter counts of the paper's models, local pretrained weights, no silent random init."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from crossderm.errors import CrossdermError
from crossderm.models.factory import count_parameters, create_model


def test_convnext_tiny_has_27_8_million_parameters() -> None:
    assert count_parameters(create_model("convnext_tiny", num_classes=7)) == 27_825_511


def test_fusion_baseline_matches_the_paper_size() -> None:
    model = create_model("crossderm_fusion_convnext_small_efficientnet_b3", num_classes=7)
    assert count_parameters(model) == 66_074_255  # paper: 66.1 M
    assert model.get_classifier().out_features == 7


def test_fusion_model_is_a_timm_model() -> None:
    model = timm.create_model("crossderm_fusion_test", num_classes=7)
    images = torch.randn(2, 3, 48, 48)
    features = model.forward_features(images)
    assert features.shape == (2, model.num_features)
    assert torch.allclose(model.forward_head(features), model(images))


def test_pretrained_path_loads_the_file(tmp_path: Path) -> None:
    source = timm.create_model("test_convnext", num_classes=1000)
    path = tmp_path / "weights.safetensors"
    save_file(source.state_dict(), path)
    model = create_model("test_convnext", num_classes=7, pretrained=True, pretrained_path=str(path))
    assert torch.equal(model.stem[0].weight, source.stem[0].weight)
    assert model.get_classifier().out_features == 7


def test_fusion_pretrained_paths_per_backbone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    paths = {}
    sources = {}
    for name in ("test_convnext", "test_efficientnet"):
        sources[name] = timm.create_model(name, num_classes=1000)
        paths[name] = str(tmp_path / f"{name}.safetensors")
        save_file(sources[name].state_dict(), paths[name])
    model = create_model("crossderm_fusion_test", pretrained=True, pretrained_path=paths)
    assert torch.equal(model.backbones[0].stem[0].weight, sources["test_convnext"].stem[0].weight)
    assert torch.equal(model.backbones[1].conv_stem.weight, sources["test_efficientnet"].conv_stem.weight)
    with pytest.raises(CrossdermError, match="HF_HUB_OFFLINE"):  # one backbone without a file: no silent init
        create_model(
            "crossderm_fusion_test", pretrained=True, pretrained_path={"test_efficientnet": paths["test_efficientnet"]}
        )
    with pytest.raises(CrossdermError, match="BACKBONE=FILE for each"):
        create_model("crossderm_fusion_test", pretrained=True, pretrained_path=paths["test_convnext"])


def test_offline_without_a_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CrossdermError, match=r"--pretrained-path convnext_tiny=FILE.safetensors"):
        create_model("convnext_tiny", pretrained=True)


def test_unknown_model() -> None:
    with pytest.raises(CrossdermError, match="unknown model 'convnext_huge_typo'"):
        create_model("convnext_huge_typo")


def test_cv_pretrained_path_flag_reaches_the_model(tmp_path: Path) -> None:
    from crossderm.train.config import load_config, with_pretrained_paths

    source = timm.create_model("test_efficientnet", num_classes=1000)
    path = tmp_path / "eff.safetensors"
    save_file(source.state_dict(), path)
    config = with_pretrained_paths(load_config("demo_a_ham_only", ["model=test_efficientnet"]), [str(path)])
    assert config.pretrained and config.pretrained_path == str(path)
    model = create_model(config.model, pretrained=config.pretrained, pretrained_path=config.pretrained_path)
    assert torch.equal(model.conv_stem.weight, source.conv_stem.weight)
    with pytest.raises(CrossdermError, match="is not a file"):
        with_pretrained_paths(config, [str(tmp_path / "absent.safetensors")])
