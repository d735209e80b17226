"""Whole-protocol projection: measured images/s x the paper protocol's image-steps -> wall time.

The protocol (README, ``src/crossderm/configs/paper_*.yaml``): 2 experiments x 5 lesion-grouped folds.
(a) trains on 4/5 of the 10,015 HAM10000 images, (b) on 4/5 of all 25,331 (10,015 HAM + 15,316 ISIC-only);
10 % of each training pool is the inner validation set (1-view prediction after every epoch, then once
with TTA for calibration), and each fold's test images of both sources (1/5 of 25,331) are predicted with
the preset's TTA views. Every preset epoch runs (the presets set no early stopping).
Experiment (a)'s model is the fusion baseline; when the rates are ConvNeXt-Tiny's, (a)'s are scaled by the
ratio of forward FLOPs (counted, not timed), since both are plain convolutional networks at 224 px.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from crossderm.models.factory import create_model
from crossderm.train.config import load_config

SOURCE_IMAGES = {"ham": 10_015, "isic": 15_316}
FOLDS = 5
EXPERIMENTS = {"a": "paper_a_ham_only_fusion", "b": "paper_b_joint_convnext_tiny"}
CONVNEXT_TINY = "convnext_tiny"
CPU_CONVNEXT_TINY_TRAIN = 3.6  # given for this 2-core CPU: ConvNeXt-Tiny 224 px training images/s
FORWARD_SHARE = 3.0  # inference images/s ~ 3x training (a step is forward + backward ~ 3 forwards)


@dataclass(frozen=True)
class Rates:
    """Images/s of one model on one device: training steps, 1-view and TTA-view inference."""

    label: str
    model: str
    train: float
    infer_1view: float
    infer_tta: float


def forward_gflops(model: str, image_size: int = 224) -> float:
    """Forward GFLOPs for one image, counted on the meta device (no weights allocated, nothing timed)."""
    with torch.device("meta"):
        net = create_model(model)
        images = torch.empty(1, 3, image_size, image_size)
    with FlopCounterMode(display=False) as counter:
        net(images)
    return counter.get_total_flops() / 1e9


def protocol_counts(preset: str) -> dict[str, Any]:
    """Images each fold trains on, validates on and predicts with TTA, from the preset's settings."""
    config = load_config(preset)
    pool = sum(SOURCE_IMAGES[s] for s in config.train_sources) * (FOLDS - 1) / FOLDS
    val = round(pool * config.val_fraction)
    train = round(pool) - val
    test = round(sum(SOURCE_IMAGES[s] for s in config.test_sources) / FOLDS)
    return {
        "preset": preset,
        "model": config.model,
        "epochs": config.epochs,
        "tta_views": config.tta,
        "folds": FOLDS,
        "train_images_per_epoch": train,
        "val_images_per_epoch": val,
        "test_images": test,
        "train_image_steps": FOLDS * config.epochs * train,
        "val_1view_images": FOLDS * config.epochs * val,
        "tta_images": FOLDS * (val + test),
    }


def project(rates: Rates, flops: dict[str, float] | None = None) -> dict[str, Any]:
    """Projected hours per experiment; ``flops`` (model -> GFLOPs) scales ConvNeXt-Tiny rates to other models."""
    experiments = {}
    for key, preset in EXPERIMENTS.items():
        counts = protocol_counts(preset)
        scale = 1.0
        if flops is not None and rates.model == CONVNEXT_TINY and counts["model"] != CONVNEXT_TINY:
            scale = flops[CONVNEXT_TINY] / flops[counts["model"]]
        tta_rate = rates.infer_tta if counts["tta_views"] == 4 else rates.infer_1view / counts["tta_views"]
        seconds = {
            "train": counts["train_image_steps"] / (rates.train * scale),
            "validation": counts["val_1view_images"] / (rates.infer_1view * scale),
            "tta_inference": counts["tta_images"] / (tta_rate * scale),
        }
        experiments[key] = {**counts, "rate_scale": scale, "seconds": seconds, "hours": sum(seconds.values()) / 3600}
    return {
        "label": rates.label,
        "model": rates.model,
        "train_images_per_s": rates.train,
        "infer_1view_images_per_s": rates.infer_1view,
        "infer_tta_images_per_s": rates.infer_tta,
        "experiments": experiments,
        "total_hours": sum(e["hours"] for e in experiments.values()),
    }


def protocol_flops() -> dict[str, float]:
    """Forward GFLOPs at 224 px of ConvNeXt-Tiny and of each paper preset's model (for ``project``)."""
    models = {CONVNEXT_TINY, *(load_config(preset).model for preset in EXPERIMENTS.values())}
    return {model: forward_gflops(model) for model in sorted(models)}


def projections(measured: Rates, device: torch.device) -> dict[str, Any]:
    """The measured model's projection and, on CPU, the one at the given ConvNeXt-Tiny rate for this CPU."""
    flops = protocol_flops()
    rows = [project(measured, flops)]
    if device.type == "cpu":
        given = Rates(
            f"ConvNeXt-Tiny 224 px on this CPU: given {CPU_CONVNEXT_TINY_TRAIN} training img/s, "
            f"inference assumed {FORWARD_SHARE:g}x that (4 views: 4x the forwards)",
            CONVNEXT_TINY,
            CPU_CONVNEXT_TINY_TRAIN,
            FORWARD_SHARE * CPU_CONVNEXT_TINY_TRAIN,
            FORWARD_SHARE * CPU_CONVNEXT_TINY_TRAIN / 4,
        )
        rows.append(project(given, flops))
    return {"name": "projection", "device": str(device), "forward_gflops_224px": flops, "projections": rows}


def _duration(hours: float) -> str:
    if hours >= 48:
        return f"{hours / 24:,.1f} days"
    return f"{hours:.1f} h" if hours >= 1 else f"{math.ceil(hours * 60)} min"


def describe(result: dict[str, Any]) -> str:
    lines = [f"whole-protocol projection on {result['device']} (2 experiments x {FOLDS} folds, every preset epoch):"]
    for row in result["projections"]:
        lines.append(f"  {row['label']}")
        lines.append(f"    rates: train {row['train_images_per_s']:.1f} img/s, inference "
                     f"{row['infer_1view_images_per_s']:.1f} img/s (1 view), {row['infer_tta_images_per_s']:.1f} img/s "
                     f"(4 views)")
        for key, e in row["experiments"].items():
            scaled = f", rates x{e['rate_scale']:.2f} for {e['model']} (FLOPs)" if e["rate_scale"] != 1 else ""
            lines.append(
                f"    ({key}) {e['preset']}: {e['epochs']} epochs x {e['train_images_per_epoch']:,} train images "
                f"x {FOLDS} folds = {e['train_image_steps']:,} image-steps; {e['val_1view_images']:,} 1-view val, "
                f"{e['tta_images']:,} x {e['tta_views']}-view test+val{scaled} -> {_duration(e['hours'])}"
            )
        lines.append(f"    total: {_duration(row['total_hours'])}")
    return "\n".join(lines)
