"""Model factory: any timm backbone by name, plus the paper's dual-backbone fusion baseline.

The fusion models are registered in timm's own registry, so ``timm.create_model`` builds them like any
other model and every model exposes the same small interface (``forward_features``, ``forward_head``,
``get_classifier``, ``num_classes``, ``pretrained_cfg``).

The paper's fusion model has 66.1 M parameters but the paper names no variants, and no standard
ConvNeXt + EfficientNet pair sums to it (ConvNeXt-S 49.45 M + EfficientNet-B3 10.70 M = 60.15 M before
any head). We take ConvNeXt-Small + EfficientNet-B3 and fuse their pooled features (768 + 1536) with a
LayerNorm -> Linear(2304, 2560) -> GELU -> Linear(2560, 7) head: 66.07 M, matching the reported size,
which a one-hidden-layer fusion MLP of that width is the simplest way to reach.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import timm
import torch
from timm.models import register_model
from torch import nn

from crossderm.errors import CrossdermError

PretrainedPath = str | Mapping[str, str] | None


class DualBackboneFusion(nn.Module):
    """Two timm feature extractors side by side; concatenated pooled features feed one classifier."""

    def __init__(
        self,
        first: str,
        second: str,
        hidden: int,
        num_classes: int = 7,
        pretrained: bool = False,
        pretrained_paths: Mapping[str, str] | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        paths = dict(pretrained_paths or {})
        self.backbones = nn.ModuleList(
            _timm_model(name, 0, pretrained, paths.get(name), drop_path_rate=drop_path_rate) for name in (first, second)
        )
        self.num_features = sum(b.num_features for b in self.backbones)
        self.num_classes = num_classes
        self.hidden = hidden
        self.drop_rate = drop_rate
        self.pretrained_cfg = dict(self.backbones[0].pretrained_cfg)
        self.norm = nn.LayerNorm(self.num_features)
        self.fc1 = nn.Linear(self.num_features, hidden)
        self.act = nn.GELU()
        self.head_drop = nn.Dropout(drop_rate)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b.forward_head(b.forward_features(x), pre_logits=True) for b in self.backbones], dim=1)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        hidden = self.head_drop(self.act(self.fc1(self.norm(features))))
        return hidden if pre_logits else self.fc2(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc2


@register_model
def crossderm_fusion_convnext_small_efficientnet_b3(pretrained: bool = False, **kwargs: Any) -> DualBackboneFusion:
    """The paper-scale fusion baseline (66.07 M parameters with 7 classes)."""
    return DualBackboneFusion(
        "convnext_small", "efficientnet_b3", hidden=2560, pretrained=pretrained, **_fusion_kwargs(kwargs)
    )


@register_model
def crossderm_fusion_test(pretrained: bool = False, **kwargs: Any) -> DualBackboneFusion:
    """The same fusion design on timm's tiny test backbones, for CPU demos and tests."""
    return DualBackboneFusion(
        "test_convnext", "test_efficientnet", hidden=128, pretrained=pretrained, **_fusion_kwargs(kwargs)
    )


def _fusion_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Drop the pretrained-config arguments timm passes to every entrypoint; backbones resolve their own."""
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return kwargs


def _timm_model(name: str, num_classes: int, pretrained: bool, path: str | None, **kwargs: Any) -> nn.Module:
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    if path is not None:
        return timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, num_classes=num_classes, **kwargs
        )
    from huggingface_hub import constants

    hint = (
        f"pass a local weights file with --pretrained-path {name}=FILE.safetensors (e.g. saved from "
        f"timm.create_model('{name}', pretrained=True) on a connected machine), or set pretrained: false"
    )
    if constants.HF_HUB_OFFLINE:
        raise CrossdermError(f"pretrained weights for {name} requested but HF_HUB_OFFLINE is set: {hint}")
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes, **kwargs)
    except OSError as exc:
        raise CrossdermError(f"cannot fetch pretrained weights for {name} ({type(exc).__name__}): {hint}") from None


def create_model(
    name: str,
    num_classes: int = 7,
    pretrained: bool = False,
    pretrained_path: PretrainedPath = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> nn.Module:
    """Build ``name`` from timm's registry (ours included). Never falls back to random init silently.

    ``pretrained_path`` is one safetensors file for a single backbone, or ``{backbone_name: file}`` for the
    fusion models.
    """
    if name not in timm.list_models() and not timm.is_model(name):
        raise CrossdermError(f"unknown model {name!r} (any timm model name, or one of {fusion_models()})")
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
    return _timm_model(name, num_classes, pretrained, path, drop_rate=drop_rate, drop_path_rate=drop_path_rate)


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
