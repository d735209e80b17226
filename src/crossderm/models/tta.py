"""Test-time augmentation: identity, horizontal flip, vertical flip and both, as one batched forward pass.

A model's input is the image batch, or ``(images, metadata)`` for a metadata-fusion model; the metadata of
an image is the same in every view. Besides the TTA probabilities one pass also gives the identity view's
logits and pre-logit features, from which the out-of-distribution scores are computed (:mod:`ood`).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from crossderm.defaults import MAX_TTA_VIEWS, TTA_VIEW_CHOICES

VIEW_FLIPS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))
assert len(VIEW_FLIPS) == MAX_TTA_VIEWS
Inputs = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def check_views(views: int) -> int:
    if views not in TTA_VIEW_CHOICES:
        raise ValueError(f"tta views must be 1..{MAX_TTA_VIEWS}, got {views}")
    return views


def split_inputs(inputs: Inputs) -> tuple[torch.Tensor, torch.Tensor | None]:
    return inputs if isinstance(inputs, tuple) else (inputs, None)


def call(model: nn.Module, inputs: Inputs) -> torch.Tensor:
    """``model(images)`` or ``model(images, metadata)``: the training step's forward (DDP-wrapped models too)."""
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


def forward_with_features(
    model: nn.Module, images: torch.Tensor, metadata: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, pre-logit features): ``model(x)`` split at the classifier, the same arithmetic."""
    features = model.forward_features(images)
    if metadata is None:
        pre = model.forward_head(features, pre_logits=True)
    else:
        pre = model.forward_head(features, metadata, pre_logits=True)
    return model.get_classifier()(pre), pre


def tta_views(images: torch.Tensor, views: int) -> torch.Tensor:
    """Stack the first ``views`` flip views along the batch dimension: (V * B, C, H, W)."""
    stacked = torch.cat([images.flip(dims) if dims else images for dims in VIEW_FLIPS[: check_views(views)]])
    return (
        stacked.contiguous(memory_format=torch.channels_last)
        if images.is_contiguous(memory_format=torch.channels_last)
        else stacked
    )


@dataclass(frozen=True)
class TTAOutput:
    probs: torch.Tensor  # (B, C) mean over the views of the softmax
    logits: torch.Tensor  # (B, C) identity view
    features: torch.Tensor  # (B, D) identity view, pre-logit


@torch.inference_mode()
def tta_outputs(model: nn.Module, inputs: Inputs, views: int, bf16: bool) -> TTAOutput:
    images, metadata = split_inputs(inputs)
    context = torch.autocast(images.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    stacked_metadata = None if metadata is None else metadata.repeat(views, 1)
    with context:
        logits, features = forward_with_features(model, tta_views(images, views), stacked_metadata)
    logits, features = logits.float(), features.float()
    probs = logits.softmax(dim=1).view(views, images.shape[0], -1).mean(dim=0)
    return TTAOutput(probs, logits[: images.shape[0]], features[: images.shape[0]])


def predict_proba_tta(model: nn.Module, inputs: Inputs, views: int, bf16: bool) -> torch.Tensor:
    """Class probabilities averaged over the TTA views (probabilities, not logits, are averaged)."""
    return tta_outputs(model, inputs, views, bf16).probs


def predict_batches(
    model: nn.Module, batches: Iterable[tuple[Inputs, Any]], views: int, bf16: bool, outputs: bool = False
) -> Any:
    """Probabilities (N, C) for every image of ``batches`` in order; with ``outputs``, a numpy ``TTAOutput``
    (probabilities, identity logits and features). One host sync at the end."""
    was_training = model.training
    model.eval()
    results = [tta_outputs(model, inputs, views, bf16) for inputs, _ in batches]
    model.train(was_training)
    if not results:
        empty = np.zeros((0, 0), dtype=np.float32)
        return TTAOutput(empty, empty, empty) if outputs else empty
    if not outputs:
        return torch.cat([r.probs for r in results]).cpu().numpy()
    return TTAOutput(*(torch.cat([getattr(r, k) for r in results]).cpu().numpy()
                       for k in ("probs", "logits", "features")))
