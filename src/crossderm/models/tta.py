"""Test-time augmentation: identity, horizontal flip, vertical flip and both, as one batched forward pass."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from crossderm.defaults import MAX_TTA_VIEWS, TTA_VIEW_CHOICES

VIEW_FLIPS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))
assert len(VIEW_FLIPS) == MAX_TTA_VIEWS


def check_views(views: int) -> int:
    if views not in TTA_VIEW_CHOICES:
        raise ValueError(f"tta views must be 1..{MAX_TTA_VIEWS}, got {views}")
    return views


def tta_views(images: torch.Tensor, views: int) -> torch.Tensor:
    """Stack the first ``views`` flip views along the batch dimension: (V * B, C, H, W)."""
    stacked = torch.cat([images.flip(dims) if dims else images for dims in VIEW_FLIPS[: check_views(views)]])
    return (
        stacked.contiguous(memory_format=torch.channels_last)
        if images.is_contiguous(memory_format=torch.channels_last)
        else stacked
    )


@torch.inference_mode()
def predict_proba_tta(model: nn.Module, images: torch.Tensor, views: int, bf16: bool) -> torch.Tensor:
    """Class probabilities averaged over the TTA views (probabilities, not logits, are averaged)."""
    context = torch.autocast(images.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with context:
        logits = model(tta_views(images, views))
    probs = logits.float().softmax(dim=1)
    return probs.view(views, images.shape[0], -1).mean(dim=0)


def predict_batches(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, Any]], views: int, bf16: bool
) -> np.ndarray:
    """Probabilities (N, C) for every image of ``batches`` (normalised images, anything) in order; one host sync."""
    was_training = model.training
    model.eval()
    outputs = [predict_proba_tta(model, images, views, bf16) for images, _ in batches]
    model.train(was_training)
    if not outputs:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(outputs).cpu().numpy()
