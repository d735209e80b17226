"""Building one timm backbone, with pretrained weights from timm's hub or a local safetensors file.

Offline, asking for pretrained weights without a file is an error that says how to supply one: never a silent
random initialisation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import timm
from torch import nn

from crossderm.errors import CrossdermError

PretrainedPath = str | Mapping[str, str] | None


def timm_model(name: str, num_classes: int, pretrained: bool, path: str | None, **kwargs: Any) -> nn.Module:
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
