"""Model factory: any timm backbone by name, plus crossderm's fusion models (registered in timm's registry).

Every model exposes timm's small interface (``forward_features``, ``forward_head``, ``get_classifier``,
``num_classes``, ``pretrained_cfg``), so training, TTA, Grad-CAM and export treat them alike.
"""

from __future__ import annotations

from collections.abc import Mapping

import timm
from torch import nn

from crossderm.errors import CrossdermError
from crossderm.models import fusion  # noqa: F401  (registers the crossderm_fusion_* models with timm)
from crossderm.models.metadata_fusion import MetadataFusion
from crossderm.models.pretrained import PretrainedPath, timm_model


def check_model_name(name: str) -> None:
    """A model timm's registry (ours included) can build; checked before a run writes anything."""
    if not timm.is_model(name) and name not in timm.list_models():
        raise CrossdermError(f"unknown model {name!r} (any timm model name, or one of {fusion_models()})")


def create_model(
    name: str,
    num_classes: int = 7,
    pretrained: bool = False,
    pretrained_path: PretrainedPath = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    metadata: bool = False,
) -> nn.Module:
    """Build ``name`` from timm's registry (ours included). Never falls back to random init silently.

    ``pretrained_path`` is one safetensors file for a single backbone, or ``{backbone_name: file}`` for the
    fusion models. ``metadata``: wrap the model in :class:`MetadataFusion` (it then takes age, sex and
    anatomical site as a second input).
    """
    if metadata:
        backbone = create_model(name, 0, pretrained, pretrained_path, drop_rate, drop_path_rate)
        return MetadataFusion(backbone, num_classes, drop_rate=drop_rate)
    check_model_name(name)
    if name.startswith("crossderm_fusion_"):
        paths = pretrained_path if isinstance(pretrained_path, Mapping) else {}
        if isinstance(pretrained_path, str):
            raise CrossdermError(f"{name} has two backbones: give --pretrained-path BACKBONE=FILE for each")
        return timm.create_model(
            name,
            pretrained=pretrained,
            num_classes=num_classes,
            pretrained_paths=paths,
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,
        )
    path = pretrained_path.get(name) if isinstance(pretrained_path, Mapping) else pretrained_path
    return timm_model(name, num_classes, pretrained, path, drop_rate=drop_rate, drop_path_rate=drop_path_rate)


def fusion_models() -> list[str]:
    return timm.list_models("crossderm_fusion_*")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std the model's (pretrained) weights expect, from its timm config."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", timm.data.IMAGENET_DEFAULT_MEAN)), tuple(
        cfg.get("std", timm.data.IMAGENET_DEFAULT_STD)
    )
