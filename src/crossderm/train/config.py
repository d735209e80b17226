"""Experiment configuration: small YAML presets (``src/crossderm/configs``) plus ``--set key=value``.

One validator (pydantic) checks every setting's type and range before any work, so ``--set epochs=-1`` or a
typo'd key fails at once with one line naming the setting, never deep inside training.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from crossderm.colour import ColorConstancy
from crossderm.defaults import MAX_TTA_VIEWS
from crossderm.errors import CrossdermError, validation_message
from crossderm.labels import CLASSES
from crossderm.train.augment import AugmentConfig
from crossderm.train.sampler import SAMPLERS

Sampler = Literal[SAMPLERS]  # type: ignore[valid-type]  (the names live in crossderm.train.sampler, once)


class ExperimentConfig(BaseModel):
    """One cross-validated experiment: what to train on, how, and what to test on."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # lr=.inf would train to NaN

    name: str = Field(min_length=1)
    model: str = Field(min_length=1)
    train_sources: list[str] = Field(min_length=1)
    test_sources: list[str] = Field(min_length=1)
    # Sources never trained on, each image predicted by every fold model (their mean): an external test set.
    external_sources: list[str] = Field(default_factory=list)
    # cv: lesion-grouped folds; loso: hold out one site at a time; site-matrix: train on one site, test the others
    protocol: Literal["cv", "loso", "site-matrix"] = "cv"
    min_site_images: int = Field(100, ge=1)  # a site smaller than this is never held out (loso, site-matrix)
    # Train and pool only these folds (cv) or jobs (loso, site-matrix); None: all. A budget-sized first look (an
    # ablation on one fold): the pooled metrics then cover those folds' test images only, and say so.
    only_folds: list[StrictInt] | None = Field(None, min_length=1)
    # Shades of Gray (p = 6) on every image, from the DATA_DIR cache made by `prepare --color-constancy sog6`
    color_constancy: ColorConstancy = "none"
    # Metadata fusion: age, sex and anatomical site as a second input (crossderm.models.metadata_fusion)
    metadata: StrictBool = False
    # Classes left out of training and validation, still tested (ISIC 2019's UNK-like case for the OOD scores)
    held_out_classes: list[str] = Field(default_factory=list)
    description: str = ""
    pretrained: StrictBool = False
    pretrained_path: str | dict[str, str] | None = None
    sampler: Sampler = "uniform"
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    drop_rate: float = Field(0.0, ge=0, lt=1)
    drop_path_rate: float = Field(0.0, ge=0, lt=1)
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    patience: int | None = Field(None, ge=1)
    tta: int = Field(4, ge=1, le=MAX_TTA_VIEWS)
    seed: int = Field(0, ge=0, lt=2**31)  # seed + fold seeds scikit-learn and numpy, which take 32 bits
    amp: Literal["auto", "bf16", "off"] = "auto"
    channels_last: StrictBool = True
    compile: StrictBool = False
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @field_validator(
        "epochs", "batch_size", "eval_batch_size", "lr", "weight_decay", "warmup_epochs", "label_smoothing",
        "drop_rate", "drop_path_rate", "val_fraction", "patience", "tta", "seed", "min_site_images", mode="before",
    )
    @classmethod
    def _not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):  # YAML's yes/true would otherwise count as 1
            raise ValueError("expected a number, got a boolean")
        return value

    @field_validator("amp", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML 1.1 reads a bare `off` as false

    @field_validator("train_sources", "test_sources", "external_sources")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value) or any(not s for s in value):
            raise ValueError("sources must be distinct, non-empty names")
        return value

    @field_validator("only_folds")
    @classmethod
    def _distinct_folds(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (len(set(value)) != len(value) or min(value) < 0):
            raise ValueError("must be distinct fold numbers >= 0")
        return value

    @field_validator("held_out_classes")
    @classmethod
    def _known_classes(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(CLASSES))
        if unknown or len(set(value)) != len(value) or len(value) >= len(CLASSES):
            raise ValueError(f"must be distinct classes among {', '.join(CLASSES)}, leaving some to train on")
        return value

    @model_validator(mode="after")
    def _external_is_test_only(self) -> ExperimentConfig:
        trained = sorted(set(self.external_sources) & set(self.train_sources))
        if trained:
            raise ValueError(f"external source(s) {', '.join(trained)} must not be in train_sources")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


# Settings that choose which folds run, not how a fold trains: a run (or an ablation) on some folds may be
# extended to all of them in the same folder, the finished folds kept.
SCOPE_KEYS = ("only_folds",)


def training_settings(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without :data:`SCOPE_KEYS`: what must match for folds to belong to one run."""
    return {key: value for key, value in config.items() if key not in SCOPE_KEYS}


def preset_names() -> list[str]:
    return sorted(
        p.name.removesuffix(".yaml") for p in resources.files("crossderm.configs").iterdir() if p.name.endswith(".yaml")
    )


def _read_yaml(path_or_name: str | Path) -> tuple[dict[str, Any], str]:
    path = Path(path_or_name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        try:
            text, where = path.read_text(), str(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise CrossdermError(f"{path}: cannot read config ({' '.join(str(exc).split())})") from None
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
    """``key=value`` (a YAML value), ``augment.min_area=0.5`` for a nested key."""
    augment = raw.get("augment")
    # a copy to add nested keys to; anything but a mapping is left for the validator to refuse
    raw = {**raw, "augment": {} if augment is None else dict(augment) if isinstance(augment, dict) else augment}
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CrossdermError(f"--set {item!r}: expected key=value")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise CrossdermError(f"--set {item!r}: the value is not valid YAML") from None
        outer, dot, inner = key.partition(".")
        if dot:
            if outer != "augment" or not inner:
                raise CrossdermError(f"--set {item!r}: only augment.<setting> may be nested")
            if not isinstance(raw["augment"], dict):
                raise CrossdermError(f"--set {item!r}: augment is {raw['augment']!r}, not a mapping of settings")
            raw["augment"][inner] = parsed
        else:
            raw[key] = parsed
    return raw


def build_config(raw: dict[str, Any], where: str) -> ExperimentConfig:
    """Validate settings; YAML's ``3e-3`` (a string to PyYAML) is read as the number it means."""
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise CrossdermError(f"{where}: invalid setting {validation_message(exc)}") from None


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
    return config.model_copy(update={"pretrained": True, "pretrained_path": plain[0] if plain else named})
