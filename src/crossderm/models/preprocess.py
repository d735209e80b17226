"""Model input, defined once: uint8 (N, H, W, 3) pixels -> float (N, 3, H, W) in [0, 1] -> normalised.

Training (after augmentation, on the device), the torch ensemble and the ONNX backend all go through these
two steps, so a model always sees the arithmetic it was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def to_unit_float(pixels: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [0, 1], on ``device``."""
    return pixels.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)


@dataclass(frozen=True)
class Normalise:
    """``(x - mean) / std`` per channel with the model's statistics, optionally channels-last."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels_last: bool = False

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        images = (images - mean) / std
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images
