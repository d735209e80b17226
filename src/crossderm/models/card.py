"""The model card ``fold_<k>/model.json``: everything inference needs, validated before any weight is read.

Training writes it when a fold finishes; ``predict``, ``export``, ``explain`` and ``serve`` read it through
:func:`read_card`, which refuses missing or nonsensical fields with one line naming the file and the field, and
:func:`verify_weights`, which refuses a weights file whose sha256 differs from the card's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from crossderm.colour import ColorConstancy
from crossderm.defaults import MAX_IMAGE_SIZE, MAX_TTA_VIEWS, MIN_IMAGE_SIZE
from crossderm.errors import CrossdermError, validation_message
from crossderm.fsutil import atomic_write_json, read_json, sha256_file
from crossderm.labels import CLASSES

MODEL_CARD_FORMAT = "crossderm-model/1"
Channel3 = Annotated[list[float], Field(min_length=3, max_length=3)]


class ModelCard(BaseModel):
    """One fold model: architecture, classes, input size and normalisation, TTA views, weights and their hash."""

    model_config = ConfigDict(extra="allow", frozen=True)

    format: Literal["crossderm-model/1"] = MODEL_CARD_FORMAT
    experiment: str
    fold: int = Field(ge=0)
    model: str = Field(min_length=1)
    classes: list[str]
    image_size: int = Field(ge=MIN_IMAGE_SIZE, le=MAX_IMAGE_SIZE)
    mean: Channel3
    std: Channel3
    tta: int = Field(ge=1, le=MAX_TTA_VIEWS)
    parameters: int = Field(ge=1)
    weights: str = Field(pattern=r"^[A-Za-z0-9_.-]+\.safetensors$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    best_epoch: int
    val_score: float
    color_constancy: ColorConstancy = "none"  # applied to the decoded pixels before the model
    metadata: bool = False  # the model takes crossderm.patient's metadata encoding as a second input
    ood_statistics: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+\.safetensors$")
    ood_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    held_out_classes: list[str] = Field(default_factory=list)

    @field_validator("classes")
    @classmethod
    def _same_classes(cls, value: list[str]) -> list[str]:
        if value != list(CLASSES):
            raise ValueError(f"must be {list(CLASSES)}")
        return value

    @field_validator("std")
    @classmethod
    def _positive_std(cls, value: list[float]) -> list[float]:
        if min(value) <= 0:
            raise ValueError("every std must be positive")
        return value


def read_card(path: Path) -> ModelCard:
    raw = read_json(path, "is this fold finished? run `crossderm cv` to completion")
    if raw.get("format") != MODEL_CARD_FORMAT:
        raise CrossdermError(f"{path}: unsupported model card format {raw.get('format')!r}")
    try:
        return ModelCard.model_validate(raw)
    except ValidationError as exc:
        raise CrossdermError(f"{path}: invalid model card ({validation_message(exc)})") from None


def write_card(path: Path, card: ModelCard) -> None:
    atomic_write_json(path, card.model_dump())


def verify_weights(card: ModelCard, card_path: Path) -> Path:
    """The card's weights file, after checking it exists and its sha256 is the card's."""
    weights = card_path.parent / card.weights
    if not weights.is_file():
        raise CrossdermError(f"{weights}: weights file missing")
    if sha256_file(weights) != card.sha256:
        raise CrossdermError(f"{weights}: sha256 does not match {card_path} (corrupt or tampered); refusing it")
    return weights
