"""Grad-CAM heatmaps for a fold ensemble, computed with the maintained ``grad-cam`` package (pytorch-grad-cam).

Target layer, chosen the same way for every timm CNN: for each backbone (the model itself, or each of
``DualBackboneFusion.backbones``) the deepest stage listed in timm's ``feature_info`` whose map is still at
least ``MIN_GRID`` cells across at the run's input size. At 224 px that is the last stage (7 x 7); at the
32 px of the CPU demos the last stage is 1 x 1, whose CAM is one flat value, so an earlier stage is used.
The fusion model's CAM is the mean of its two backbones' CAMs (grad-cam's multi-layer mean), and a fold
ensemble's CAM is the mean of its folds' CAMs, each scaled to [0, 1] first, so every fold weighs the same.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import nn

from crossderm.errors import CrossdermError
from crossderm.imaging import DecodedImage
from crossderm.labels import CLASSES
from crossderm.models.fusion import DualBackboneFusion
from crossderm.models.metadata_fusion import MetadataFusion, WithFixedMetadata
from crossderm.predict.ensemble import Ensemble

MIN_GRID = 4
DISPLAY_SIZE = 384
IMAGE_WEIGHT = 0.55


class Explanation(NamedTuple):
    heatmap: np.ndarray
    overlay: Image.Image
    class_name: str


def _backbones(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """(dotted prefix, timm backbone) of every image backbone inside ``model``."""
    if isinstance(model, MetadataFusion):
        return _backbones(model.backbone, f"{prefix}backbone.")
    if isinstance(model, DualBackboneFusion):
        return [(f"{prefix}backbones.{i}.", b) for i, b in enumerate(model.backbones)]
    return [(prefix, model)]


def target_layer_names(model: nn.Module, image_size: int) -> list[str]:
    """Dotted module names of the Grad-CAM layers of ``model`` at ``image_size`` (one per backbone)."""
    names = []
    for prefix, backbone in _backbones(model):
        stages = getattr(backbone, "feature_info", None)
        if not stages:
            raise CrossdermError(f"{type(backbone).__name__} has no timm feature_info; cannot choose a Grad-CAM layer")
        fitting = [s for s in stages if image_size // s["reduction"] >= MIN_GRID] or stages[:1]
        names.append(prefix + fitting[-1]["module"])
    return names


@contextmanager
def _weights_frozen(model: nn.Module) -> Iterator[None]:
    """Gradients flow to the activations only: no ``.grad`` buffer the size of the model is kept per fold."""
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield
    finally:
        for param, flag in zip(model.parameters(), flags, strict=True):
            param.requires_grad_(flag)


def model_cam(
    model: nn.Module, images: torch.Tensor, class_index: int, image_size: int, metadata: torch.Tensor | None = None
) -> np.ndarray:
    """One model's Grad-CAM (H, W) in [0, 1] for ``class_index`` of a normalised (1, 3, H, W) batch; a metadata
    model is explained for the image's own ``metadata`` (held fixed)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layers = [model.get_submodule(name) for name in target_layer_names(model, image_size)]
    if metadata is not None:
        model = WithFixedMetadata(model, metadata)
    cam = GradCAM(model=model, target_layers=layers)
    try:
        with _weights_frozen(model), torch.enable_grad():
            leaf = images.detach().clone().requires_grad_(True)  # gives the graph a leaf while weights are frozen
            heatmap = cam(leaf, targets=[ClassifierOutputTarget(class_index)])[0]
    except ValueError as exc:  # grad-cam's message for feature maps that are not (N, C, H, W)
        raise CrossdermError(f"Grad-CAM cannot use {type(model).__name__}'s feature maps ({exc})") from None
    finally:
        cam.activations_and_grads.release()
    return heatmap


def ensemble_cam(
    ensemble: Ensemble, pixels: np.ndarray, class_index: int, metadata: np.ndarray | None = None
) -> np.ndarray:
    """Mean of the fold models' CAMs for one uint8 (S, S, 3) image at the ensemble's input size, in [0, 1]."""
    inputs = ensemble.inputs(pixels[None], None if metadata is None else metadata[None])
    images, meta = inputs if isinstance(inputs, tuple) else (inputs, None)
    cams = [model_cam(m.model, images, class_index, ensemble.image_size, meta) for m in ensemble.members]
    mean = np.mean(cams, axis=0, dtype=np.float64)
    span = mean.max() - mean.min()
    return ((mean - mean.min()) / span if span > 0 else np.zeros_like(mean)).astype(np.float32)


def _resize(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to (width, height), kept in [0, 1]."""
    if heatmap.shape[::-1] == size:
        return heatmap
    resized = Image.fromarray(heatmap.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32).clip(0.0, 1.0)


def overlay(display: Image.Image, heatmap: np.ndarray) -> Image.Image:
    """The heatmap (any size) stretched over ``display`` in the jet colour map, half transparent."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = np.asarray(display.convert("RGB"), dtype=np.float32) / 255.0
    mask = _resize(heatmap, display.size)
    return Image.fromarray(show_cam_on_image(rgb, mask, use_rgb=True, image_weight=IMAGE_WEIGHT))


def gradcam_overlay(
    ensemble: Ensemble,
    pixels: np.ndarray,
    class_index: int | None = None,
    display: Image.Image | None = None,
    metadata: np.ndarray | None = None,
) -> Explanation:
    """Grad-CAM of one uint8 (H, W, 3) image: heatmap (H, W) in [0, 1], overlay and the explained class.

    ``pixels`` should come from :func:`crossderm.imaging.load_image` at ``ensemble.image_size``, as in
    training; other sizes are resized to it for the model. ``class_index`` defaults to the ensemble's
    prediction (with the run's TTA views). The overlay is drawn on ``display`` (e.g. a larger crop of the
    same image) or, by default, on ``pixels``. ``metadata``: one image's encoded metadata, for a metadata model.
    """
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected uint8 (H, W, 3) pixels, got {pixels.dtype} {pixels.shape}")
    size = ensemble.image_size
    model_pixels = pixels
    if pixels.shape[:2] != (size, size):
        model_pixels = np.array(Image.fromarray(pixels).resize((size, size), Image.Resampling.BICUBIC))
    if class_index is None:
        meta = None if metadata is None else metadata[None]
        class_index = int(ensemble.predict(model_pixels[None], views=ensemble.card.tta, metadata=meta)[0].argmax())
    if not 0 <= class_index < len(CLASSES):
        raise ValueError(f"class index must be 0..{len(CLASSES) - 1}, got {class_index}")
    heatmap = _resize(ensemble_cam(ensemble, model_pixels, class_index, metadata), (pixels.shape[1], pixels.shape[0]))
    background = display if display is not None else Image.fromarray(pixels)
    return Explanation(heatmap, overlay(background, heatmap), CLASSES[class_index])


@dataclass(frozen=True)
class ExplainedImage:
    """What ``serve`` and ``explain`` show for one image: probabilities, prediction and the overlay as PNG."""

    probabilities: np.ndarray
    predicted: int
    explanation: Explanation
    png: bytes
    ood: dict[str, float]


def explain_image(
    ensemble: Ensemble, image: DecodedImage, class_index: int | None = None, metadata: np.ndarray | None = None
) -> ExplainedImage:
    """Predict one decoded image (the run's TTA views) with its OOD scores, then Grad-CAM of ``class_index``
    (default: the prediction) drawn on the image's display crop, encoded as PNG. ``metadata``: the image's
    encoded metadata (crossderm.patient), for a metadata model."""
    meta = None if metadata is None else metadata[None]
    probs, ood = ensemble.predict_with_ood(image.pixels[None], views=ensemble.card.tta, metadata=meta)
    predicted = int(probs[0].argmax())
    target = predicted if class_index is None else class_index
    explanation = gradcam_overlay(ensemble, image.pixels, class_index=target, display=image.display,
                                  metadata=metadata)
    buffer = io.BytesIO()
    explanation.overlay.save(buffer, format="PNG")
    return ExplainedImage(probs[0], predicted, explanation, buffer.getvalue(),
                          {name: float(values[0]) for name, values in ood.items()})
