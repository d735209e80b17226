"""The config validator: YAML presets and ``--set`` overrides are typed and range-checked before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from crossderm.cli import main
from crossderm.errors import CrossdermError
from crossderm.train.config import load_config, preset_names, with_pretrained_paths


@pytest.mark.parametrize(
    ("override", "attribute", "expected"),
    [
        ("lr=3e-3", "lr", 0.003),  # PyYAML reads 3e-3 as a string; it is the number it means
        ("lr=1", "lr", 1.0),
        ("epochs=2.0", "epochs", 2),
        ("epochs='5'", "epochs", 5),
        ("patience=null", "patience", None),
        ("patience=3", "patience", 3),
        ("pretrained=yes", "pretrained", True),  # YAML 1.1 boolean
        ("train_sources=[ham, clinic]", "train_sources", ["ham", "clinic"]),
        ("sampler=class_balanced", "sampler", "class_balanced"),
        ("amp=off", "amp", "off"),
    ],
)
def test_values_are_coerced_to_their_declared_types(override: str, attribute: str, expected: object) -> None:
    value = getattr(load_config("demo_b_joint", [override]), attribute)
    assert value == expected and type(value) is type(expected)


def test_nested_augment_setting() -> None:
    config = load_config("demo_b_joint", ["augment.min_area=0.5", "augment.flips=false"])
    assert config.augment.min_area == 0.5 and config.augment.flips is False
    assert config.augment.rotate90 is True  # untouched defaults stay


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("epochs=0", "epochs: Input should be greater than or equal to 1"),
        ("epochs=2.5", "epochs: Input should be a valid integer"),
        ("epochs=true", "epochs: expected a number, got a boolean"),
        ("lr=fast", "lr: Input should be a valid number"),
        ("lr=-1", "lr: Input should be greater than 0"),
        ("tta=5", "tta: Input should be less than or equal to 4"),
        ("val_fraction=0.5", "val_fraction: Input should be less than 0.5"),
        ("sampler=hospital_balanced", "sampler: Input should be 'uniform'"),
        ("amp=fp16", "amp: Input should be 'auto', 'bf16' or 'off'"),
        ("pretrained=2", "pretrained: Input should be a valid boolean"),
        ("train_sources=ham", "train_sources: Input should be a valid list"),
        ("train_sources=[ham, ham]", "train_sources: sources must be distinct"),
        ("external_sources=[ham]", "external source(s) ham must not be in train_sources"),
        ("protocol=lopo", "protocol: Input should be 'cv', 'loso' or 'site-matrix'"),
        ("epoch=3", "epoch: Extra inputs are not permitted"),
        ("augment.min_area=0", "augment.min_area: Input should be greater than 0"),
        ("augment.zoom=1", "augment.zoom: Extra inputs are not permitted"),
        ("model.depth=3", "only augment.<setting> may be nested"),
        ("epochs", "expected key=value"),
        ("=3", "expected key=value"),
        ("epochs=[1", "the value is not valid YAML"),
        ("only_folds=[0, 0]", "only_folds: must be distinct fold numbers >= 0"),
        ("only_folds=[-1]", "only_folds: must be distinct fold numbers >= 0"),
        ("only_folds=[]", "only_folds: List should have at least 1 item"),
        ("only_folds=[true]", "only_folds.0: Input should be a valid integer"),
        ("only_folds=2", "only_folds: Input should be a valid list"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(override: str, message: str) -> None:
    with pytest.raises(CrossdermError) as raised:
        load_config("demo_b_joint", [override])
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_bad_setting_fails_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["cv", "--config", "demo_b_joint", "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "r"),
                 "--set", "batch_size=0"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "batch_size: Input should be greater than or equal to 1" in err
    assert not (tmp_path / "r").exists()


def test_every_preset_is_valid_and_named_after_its_file() -> None:
    for name in preset_names():
        assert load_config(name).name == name


def test_config_files_and_pretrained_paths(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nmodel: resnet18\ntrain_sources: [ham]\ntest_sources: [ham, isic]\n")
    config = load_config(path, ["epochs=2"])
    assert (config.name, config.epochs, config.sampler) == ("mine", 2, "uniform")
    path.write_text("- not\n- a mapping\n")
    with pytest.raises(CrossdermError, match="expected a mapping of settings"):
        load_config(path)
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    assert with_pretrained_paths(config, [str(weights)]).pretrained_path == str(weights)
    assert with_pretrained_paths(config, [f"a={weights}", f"b={weights}"]).pretrained_path == {
        "a": str(weights), "b": str(weights)}
    with pytest.raises(CrossdermError, match="is not a file"):
        with_pretrained_paths(config, [str(tmp_path / "absent.safetensors")])
    with pytest.raises(CrossdermError, match="BACKBONE=FILE for every backbone"):
        with_pretrained_paths(config, [str(weights), f"b={weights}"])
