"""Benchmark: 4-view test-time augmentation against 1 view, through ``predict_proba_tta``.

The same normalised images (already on the device) are predicted with 1 and with 4 views, rounds
interleaved. As in ``crossderm cv``, the evaluation batch size bounds the images of one forward pass: 1 view
runs batches of B images, 4 views run batches of B/4 images stacked into one forward pass of B views. The
cost should then be at most about 4x. The images/s of both are the inference rates the projection uses.
Run as ``python benchmarks/bench_tta.py [--quick]``.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any

import torch
from common import (
    Prepared,
    Scale,
    bench_model,
    best_rates,
    random_order,
    run_on_synthetic,
    synchronize,
    target_fields,
    timed_rate,
)

from crossderm.models.tta import predict_proba_tta

TARGET = 4.2  # 4-view seconds over 1-view seconds, at most
VIEWS = (1, 4)
READY_BATCHES = 2  # distinct batches cycled through while timing


def measure(data_dir: Path, scale: Scale, device: torch.device) -> dict[str, Any]:
    """Images/s with 1 and 4 views; ``ratio`` = 4-view time / 1-view time for the same images."""
    data = Prepared.open(data_dir)
    model = bench_model(scale.model, device).eval()
    loader = data.batches(scale.eval_batch_size, device, model)
    order = random_order(len(data.rows), READY_BATCHES * scale.eval_batch_size, seed=0)
    ready = [(images.clone(), labels.clone()) for images, labels in loader.batches(order)]
    amp = device.type == "cuda"

    def predict(images: torch.Tensor, views: int) -> None:
        for chunk in images.split(max(1, len(images) // views)):
            predict_proba_tta(model, chunk, views, amp)

    def rate(views: int) -> float:
        for images, _ in ready:  # warm-up (kernel selection, allocator) for this view count
            predict(images, views)
        synchronize(device)
        return timed_rate(itertools.cycle(ready), scale.eval_batches, lambda batch: predict(batch[0], views), device)

    rates = best_rates({f"views{v}": (lambda v=v: rate(v)) for v in VIEWS}, scale.repeats)
    ratio = rates["views1"] / rates["views4"]
    return {
        "name": "tta",
        "unit": "images/s",
        "device": str(device),
        "model": scale.model,
        "image_size": data.image_size,
        "batch_size": scale.eval_batch_size,
        "bf16_autocast": amp,
        "timed_batches": scale.eval_batches,
        "repeats": scale.repeats,
        "views1_images_per_s": rates["views1"],
        "views4_images_per_s": rates["views4"],
        "ratio": ratio,
        "ratio_definition": "4-view time / 1-view time = views1_images_per_s / views4_images_per_s",
        **target_fields(ratio, TARGET, at_least=False),
    }


def run(quick: bool) -> dict[str, Any]:
    return run_on_synthetic(measure, quick)


def describe(result: dict[str, Any]) -> str:
    return "\n".join([
        f"tta: {result['model']} at {result['image_size']} px, batches of {result['batch_size']} on {result['device']}",
        f"  1 view : {result['views1_images_per_s']:.1f} images/s",
        f"  4 views: {result['views4_images_per_s']:.1f} images/s",
        f"  4-view / 1-view time: {result['ratio']:.2f}x (target <= {result['target']:g}x: "
        f"{'met' if result['meets_target'] else 'NOT met'})",
    ])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data set and model input, fewer batches")
    print(describe(run(parser.parse_args().quick)))
