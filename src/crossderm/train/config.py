"""Experiment configuration: small YAML presets (``src/crossderm/configs``) plus ``--set key=value``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from crossderm.errors import CrossdermError
from crossderm.train.augment import AugmentConfig


@dataclass
class ExperimentConfig:
    """One cross-validated experiment: what to train on, how, and what to test on."""

    name: str
    model: str
    train_sources: list[str]
    test_sources: list[str]
    description: str = ""
    pretrained: bool = False
    pretrained_path: str | dict[str, str] | None = None
    sampler: str = "uniform"
    epochs: int = 10
    batch_size: int = 32
    eval_batch_size: int = 128
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    val_fraction: float = 0.1
    patience: int | None = None
    tta: int = 4
    seed: int = 0
    amp: str = "auto"
    channels_last: bool = True
    compile: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def preset_names() -> list[str]:
    return sorted(
        p.name.removesuffix(".yaml") for p in resources.files("crossderm.configs").iterdir() if p.name.endswith(".yaml")
    )


def _read_yaml(path_or_name: str | Path) -> tuple[dict[str, Any], str]:
    path = Path(path_or_name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        text, where = path.read_text(), str(path)
    else:
        preset = resources.files("crossderm.configs") / f"{path_or_name}.yaml"
        if not preset.is_file():
            raise CrossdermError(
                f"{path_or_name}: no such config file or preset (presets: {', '.join(preset_names())})"
            )
        text, where = preset.read_text(), f"preset {path_or_name}"
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise CrossdermError(f"{where}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise CrossdermError(f"{where}: expected a mapping of settings")
    return raw, where


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``key=value`` (YAML value), ``augment.min_area=0.5`` for nested keys."""
    raw = {**raw, "augment": dict(raw.get("augment") or {})}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise CrossdermError(f"--set {item!r}: expected key=value")
        parsed = yaml.safe_load(value)
        if "." in key:
            outer, inner = key.split(".", 1)
            raw.setdefault(outer, {})[inner] = parsed
        else:
            raw[key] = parsed
    return raw


def build_config(raw: dict[str, Any], where: str) -> ExperimentConfig:
    fields = {f.name for f in dataclasses.fields(ExperimentConfig)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise CrossdermError(f"{where}: unknown setting(s) {', '.join(unknown)}")
    augment_fields = {f.name for f in dataclasses.fields(AugmentConfig)}
    augment = dict(raw.get("augment") or {})
    bad = sorted(set(augment) - augment_fields)
    if bad:
        raise CrossdermError(f"{where}: unknown augment setting(s) {', '.join(bad)}")
    try:
        config = ExperimentConfig(
            **{k: _coerce(ExperimentConfig, k, v, where) for k, v in raw.items() if k != "augment"},
            augment=AugmentConfig(**{k: _coerce(AugmentConfig, k, v, where) for k, v in augment.items()}),
        )
    except TypeError as exc:
        raise CrossdermError(f"{where}: {exc}") from None
    if not 1 <= config.tta <= 4:
        raise CrossdermError(f"{where}: tta must be 1..4, got {config.tta}")
    if config.amp not in ("auto", "bf16", "off"):
        raise CrossdermError(f"{where}: amp must be auto, bf16 or off, got {config.amp!r}")
    return config


def _coerce(cls: type, key: str, value: Any, where: str) -> Any:
    """Check a setting against its declared type; numbers written as ``3e-3`` (a YAML string) become floats."""
    kind = {f.name: f.type for f in dataclasses.fields(cls)}[key]
    try:
        if kind == "float":
            return float(value)
        if kind == "int" and not isinstance(value, bool):
            if float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        if kind == "bool" and not isinstance(value, bool):
            raise ValueError
        if kind == "str":
            return str(value)
        if kind == "int | None":
            return None if value is None else int(value)
        if kind == "list[str]" and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ValueError
    except (TypeError, ValueError):
        raise CrossdermError(f"{where}: {key}={value!r} is not a valid {kind}") from None
    return value


def load_config(path_or_name: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    raw, where = _read_yaml(path_or_name)
    return build_config(apply_overrides(raw, overrides or []), where)


def with_pretrained_paths(config: ExperimentConfig, specs: list[str]) -> ExperimentConfig:
    """``FILE`` (single backbone) or ``BACKBONE=FILE`` entries -> ``pretrained_path``; each file must exist."""
    named: dict[str, str] = {}
    plain: list[str] = []
    for spec in specs:
        name, sep, file = spec.rpartition("=")
        path = file if sep else spec
        if not Path(path).is_file():
            raise CrossdermError(f"--pretrained-path {spec}: {path} is not a file")
        if sep:
            named[name] = path
        else:
            plain.append(path)
    if plain and (named or len(plain) > 1):
        raise CrossdermError("give one --pretrained-path FILE, or BACKBONE=FILE for every backbone")
    return dataclasses.replace(config, pretrained=True, pretrained_path=plain[0] if plain else named)
