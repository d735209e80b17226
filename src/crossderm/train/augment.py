"""Dermoscopy augmentation applied to whole batches on the training device.

Dermoscopic images have no canonical orientation, so flips and 90-degree rotations are label-preserving;
scale/crop, brightness/contrast/saturation jitter and a per-channel gain (a dermoscope's colour cast)
make the model less sensitive to the acquisition site. Geometry is one affine warp per image
(``grid_sample``), so the whole batch is augmented in a handful of tensor ops, on the GPU when present.
Evaluation applies none of this: only normalisation, plus the flip views of test-time augmentation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from crossderm.colour import SOG_POWER


class AugmentConfig(BaseModel):
    """Strengths of the batch augmentations (``augment.<name>`` in a config); 0 turns a jitter off."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    flips: StrictBool = True
    rotate90: StrictBool = True
    min_area: float = Field(0.6, gt=0, le=1)
    brightness: float = Field(0.2, ge=0, lt=1)
    contrast: float = Field(0.2, ge=0, lt=1)
    saturation: float = Field(0.2, ge=0, le=1)
    channel_gain: float = Field(0.1, ge=0, lt=1)
    # Share of images re-lit with the Shades-of-Gray illuminant of another training image (Galdran et al.
    # 2017's data-driven colour augmentation): the image's own SoG illuminant is replaced by the drawn one.
    illuminant: float = Field(0.0, ge=0, le=1)


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def _affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.affine_grid(theta, align_corners=False)`` as one broadcast add (a K=3 batched matmul is slow on CPU)."""
    xs = (torch.arange(width, device=theta.device, dtype=theta.dtype) * 2 + 1) / width - 1
    ys = (torch.arange(height, device=theta.device, dtype=theta.dtype) * 2 + 1) / height - 1
    t = theta.view(-1, 2, 3)
    x_part = t[:, None, None, :, 0] * xs.view(1, 1, width, 1)  # (B, 1, W, 2)
    y_part = t[:, None, None, :, 1] * ys.view(1, height, 1, 1) + t[:, None, None, :, 2]  # (B, H, 1, 2)
    return x_part + y_part


def relight(images: torch.Tensor, targets: torch.Tensor, power: float = SOG_POWER) -> torch.Tensor:
    """Each image's unit-norm Shades-of-Gray illuminant replaced by ``targets`` (B, 3), brightness kept."""
    own = images.clamp(min=0).pow(power).mean(dim=(2, 3)).pow(1.0 / power)
    own = own / own.norm(dim=1, keepdim=True).clamp(min=1e-6)
    return (images * (targets / own.clamp(min=1e-6))[:, :, None, None]).clamp(0.0, 1.0)


def augment_batch(
    images: torch.Tensor,
    config: AugmentConfig,
    generator: torch.Generator,
    illuminants: torch.Tensor | None = None,
) -> torch.Tensor:
    """``images``: float (B, 3, H, W) in [0, 1] -> augmented batch of the same shape and range.

    Geometry is one ``grid_sample``; the colour jitter (saturation, contrast, brightness, channel gain) is a
    per-image affine colour map, so it runs as one batched 3x3 matrix product plus an offset. With
    ``config.illuminant`` > 0, that share of the images is first re-lit with illuminants drawn from
    ``illuminants`` (M, 3): the training images' own (:func:`crossderm.colour.illuminants`).
    """
    n, device, dtype = images.shape[0], images.device, images.dtype
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
        [cos * flip_x, -sin * flip_y, shift[:, 0], sin * flip_x, cos * flip_y, shift[:, 1]], dim=1
    ).to(dtype)
    grid = _affine_grid(theta, images.shape[2], images.shape[3])
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if config.illuminant > 0:
        if illuminants is None or not len(illuminants):
            raise ValueError("augment.illuminant needs the training images' illuminants")
        chosen = torch.rand(n, generator=generator, device=device) < config.illuminant
        drawn = torch.randint(0, len(illuminants), (n,), generator=generator, device=device)
        relit = relight(images, illuminants.to(device=device, dtype=dtype)[drawn])
        images = torch.where(chosen[:, None, None, None], relit, images)

    # y = gain * b * (c * (s * x + (1 - s) * grey(x)) + (1 - c) * mean_grey): linear in x per image
    luma = torch.tensor([0.299, 0.587, 0.114], device=device, dtype=dtype)
    saturation = _uniform(n, 1 - config.saturation, 1 + config.saturation, generator, device).to(dtype)
    contrast = _uniform(n, 1 - config.contrast, 1 + config.contrast, generator, device).to(dtype)
    brightness = _uniform(n, 1 - config.brightness, 1 + config.brightness, generator, device).to(dtype)
    gain = _uniform(n * 3, 1 - config.channel_gain, 1 + config.channel_gain, generator, device).view(n, 3).to(dtype)
    eye = torch.eye(3, device=device, dtype=dtype)
    mix = saturation.view(n, 1, 1) * eye + (1 - saturation).view(n, 1, 1) * luma.view(1, 1, 3)
    scale = (gain * brightness.view(n, 1)).view(n, 3, 1)
    matrix = scale * contrast.view(n, 1, 1) * mix
    mean_grey = images.mean(dim=(2, 3)) @ luma
    offset = scale.view(n, 3) * ((1 - contrast) * mean_grey).view(n, 1)
    flat = torch.bmm(matrix, images.reshape(n, 3, -1)).add_(offset.view(n, 3, 1))
    return flat.view_as(images).clamp_(0.0, 1.0)
