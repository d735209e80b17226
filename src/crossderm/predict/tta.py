"""Test-time augmentation: identity, horizontal flip, vertical flip and both, as one batched forward pass."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from crossderm.train.loader import CacheBatches

VIEW_FLIPS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))


def tta_views(images: torch.Tensor, views: int) -> torch.Tensor:
    """Stack the first ``views`` flip views along the batch dimension: (V * B, C, H, W)."""
    if not 1 <= views <= len(VIEW_FLIPS):
        raise ValueError(f"tta views must be 1..{len(VIEW_FLIPS)}, got {views}")
    stacked = torch.cat([images.flip(dims) if dims else images for dims in VIEW_FLIPS[:views]])
    return (
        stacked.contiguous(memory_format=torch.channels_last)
        if images.is_contiguous(memory_format=torch.channels_last)
        else stacked
    )


@torch.inference_mode()
def predict_logits_tta(model: nn.Module, images: torch.Tensor, views: int, amp: bool) -> torch.Tensor:
    """Class probabilities averaged over the TTA views (probabilities, not logits, are averaged)."""
    context = torch.autocast(images.device.type, dtype=torch.bfloat16) if amp else nullcontext()
    with context:
        logits = model(tta_views(images, views))
    probs = logits.float().softmax(dim=1)
    return probs.view(views, images.shape[0], -1).mean(dim=0)


def predict_cached(model: nn.Module, batches: CacheBatches, views: int, amp: bool) -> np.ndarray:
    """Probabilities (N, C) for every image of ``batches`` in subset order; one host sync at the end."""
    was_training = model.training
    model.eval()
    outputs = [predict_logits_tta(model, images, views, amp) for images, _ in batches.batches()]
    model.train(was_training)
    if not outputs:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(outputs).cpu().numpy()
