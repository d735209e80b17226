"""Dermoscopy augmentation applied to whole batches on the training device.

Dermoscopic images have no canonical orientation, so flips and 90-degree rotations are label-preserving;
scale/crop, brightness/contrast/saturation jitter and a per-channel gain (a dermoscope's colour cast)
make the model less sensitive to the acquisition site. Geometry is one affine warp per image
(``grid_sample``), so the whole batch is augmented in a handful of tensor ops, on the GPU when present.
Evaluation applies none of this: only normalisation, plus the flip views of test-time augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    flips: bool = True
    rotate90: bool = True
    min_area: float = 0.6
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    channel_gain: float = 0.1


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def augment_batch(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """``images``: float (B, 3, H, W) in [0, 1] -> augmented batch of the same shape and range."""
    n, device = images.shape[0], images.device
    angle = torch.zeros(n, device=device)
    if config.rotate90:
        angle = torch.randint(0, 4, (n,), generator=generator, device=device).float() * (torch.pi / 2)
    side = _uniform(n, config.min_area, 1.0, generator, device).sqrt()
    flip_x = torch.ones(n, device=device)
    flip_y = torch.ones(n, device=device)
    if config.flips:
        flip_x = torch.where(torch.rand(n, generator=generator, device=device) < 0.5, -1.0, 1.0)
        flip_y = torch.where(torch.rand(n, generator=generator, device=device) < 0.5, -1.0, 1.0)
    shift = (torch.rand(n, 2, generator=generator, device=device) * 2 - 1) * (1 - side)[:, None]
    cos, sin = torch.cos(angle) * side, torch.sin(angle) * side
    theta = torch.stack(
        [
            torch.stack([cos * flip_x, -sin * flip_y, shift[:, 0]], dim=1),
            torch.stack([sin * flip_x, cos * flip_y, shift[:, 1]], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    shape = (n, 1, 1, 1)
    grey = (images * torch.tensor([0.299, 0.587, 0.114], device=device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    saturation = _uniform(n, 1 - config.saturation, 1 + config.saturation, generator, device).view(shape)
    images = grey + (images - grey) * saturation
    contrast = _uniform(n, 1 - config.contrast, 1 + config.contrast, generator, device).view(shape)
    mean = grey.mean(dim=(2, 3), keepdim=True)
    images = mean + (images - mean) * contrast
    brightness = _uniform(n, 1 - config.brightness, 1 + config.brightness, generator, device).view(shape)
    gain = _uniform(n * 3, 1 - config.channel_gain, 1 + config.channel_gain, generator, device).view(n, 3, 1, 1)
    return (images * brightness * gain).clamp_(0.0, 1.0)
