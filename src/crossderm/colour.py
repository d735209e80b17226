"""Colour constancy, defined once: the cache, training's illuminant augmentation and inference use these.

Shades of Gray (Finlayson & Trezzi 2004) with Minkowski norm p = 6, as the ISIC 2019 winner (Gessert et al.,
ngessert/isic2019) and FLamby's Fed-ISIC2019 preprocessing use: the illuminant of an image is the per-channel
p-norm mean ``e_c = (mean x_c^p)^(1/p)``; dividing each channel by ``sqrt(3) * e_c / |e|`` maps that
illuminant to grey while keeping the image's brightness. It is applied to the model-sized square (what the
cache stores), so training and inference see exactly the same correction.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

ColorConstancy = Literal["none", "sog6"]
COLOR_CONSTANCY: tuple[str, ...] = ("none", "sog6")
SOG_POWER = 6.0


def illuminants(pixels: np.ndarray, power: float = SOG_POWER) -> np.ndarray:
    """Unit-norm Shades-of-Gray illuminant per image: uint8 (..., H, W, 3) -> float64 (..., 3)."""
    x = np.asarray(pixels, dtype=np.float64)
    estimate = np.mean(x**power, axis=(-3, -2)) ** (1.0 / power)
    norm = np.linalg.norm(estimate, axis=-1, keepdims=True)
    return np.divide(estimate, norm, out=np.full_like(estimate, 1 / np.sqrt(3)), where=norm > 0)


def shades_of_gray(pixels: np.ndarray, power: float = SOG_POWER) -> np.ndarray:
    """Shades-of-Gray corrected copy of uint8 (..., H, W, 3) images (each image its own illuminant)."""
    gains = 1.0 / (illuminants(pixels, power) * np.sqrt(3.0))
    corrected = np.asarray(pixels, dtype=np.float64) * gains[..., None, None, :]
    return np.clip(np.rint(corrected), 0, 255).astype(np.uint8)


def apply_color_constancy(pixels: np.ndarray, method: str) -> np.ndarray:
    """The model's colour constancy (``none`` returns the pixels unchanged)."""
    if method == "none":
        return pixels
    if method == "sog6":
        return shades_of_gray(pixels, SOG_POWER)
    raise ValueError(f"unknown colour constancy {method!r} (one of {', '.join(COLOR_CONSTANCY)})")
