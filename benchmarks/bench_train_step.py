"""Benchmark: training images/s fed by the crossderm loader against the same steps fed from memory.

One step is what ``crossderm.train.engine`` runs: forward (bf16 autocast on CUDA), cross-entropy with label
smoothing, backward, AdamW step, on a channels_last model. "memory" feeds batches that are already
normalised on the device (the model alone); "loader" feeds ``CacheBatches`` + ``augment_batch`` from the
prepared cache (on a GPU with room, the cache is copied to the device first, as the engine does).
The ratio loader/memory shows how much of the step the input pipeline costs. Both feeds train the same
model alternately, rounds interleaved. Run as ``python benchmarks/bench_train_step.py [--quick]``.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from common import (
    Batch,
    Prepared,
    Scale,
    autocast,
    bench_model,
    best_rates,
    random_order,
    run_on_synthetic,
    target_fields,
    timed_rate,
)
from torch import nn

from crossderm.train.augment import AugmentConfig
from crossderm.train.loader import CacheBatches

TARGET = 0.95  # loader-fed images/s over memory-fed images/s
CPU_REFERENCE_MODEL = "resnet18"
CPU_REFERENCE_STEPS = 3


class Stepper:
    """One training step of the engine, on one model and optimiser shared by every feed."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.model, self.device = model, device
        self.model.train()
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)

    def __call__(self, batch: Batch) -> None:
        images, labels = batch
        with autocast(self.device):
            loss = self.loss_fn(self.model(images), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def memory_batches(batches: Iterator[Batch], count: int) -> list[Batch]:
    """``count`` ready batches materialised on the device once and cycled: the model-only feed."""
    return [(images.clone(), labels.clone()) for images, labels in itertools.islice(batches, count)]


def step_rates(step: Stepper, feeds: dict[str, Callable[[int], Iterator[Batch]]], steps: int, warmup: int,
               repeats: int) -> dict[str, float]:
    """Images/s of ``step`` per feed; ``feeds[name](seed)`` yields at least ``steps + 1`` batches."""
    warm = next(iter(feeds.values()))(-1)
    for batch in itertools.islice(warm, warmup):
        step(batch)
    seeds = itertools.count()
    measures = {name: (lambda feed=feed: timed_rate(feed(next(seeds)), steps, step, step.device))
                for name, feed in feeds.items()}
    return best_rates(measures, repeats)


def crossderm_feed(loader: CacheBatches, steps: int) -> Callable[[int], Iterator[Batch]]:
    """Seeded epochs of the engine's loader, ``steps + 1`` batches each: random order, augmentation on the device."""

    def feed(seed: int) -> Iterator[Batch]:
        order = random_order(len(loader), (steps + 1) * loader.batch_size, seed)
        return loader.batches(order, AugmentConfig(), torch.Generator(device=loader.device).manual_seed(seed))

    return feed


def feed_rates(data: Prepared, model_name: str, scale: Scale, device: torch.device, steps: int) -> dict[str, float]:
    """Images/s of the same training step fed from memory and by the crossderm loader."""
    model = bench_model(model_name, device)
    loader_feed = crossderm_feed(data.batches(scale.batch_size, device, model), steps)
    in_memory = memory_batches(loader_feed(0), min(4, steps))
    feeds = {
        "memory": lambda seed: itertools.cycle(in_memory),
        "loader": loader_feed,
    }
    return step_rates(Stepper(model, device), feeds, steps, scale.warmup_steps, scale.repeats)


def measure(data_dir: Path, scale: Scale, device: torch.device) -> dict[str, Any]:
    """Model-only and loader-fed images/s; ``ratio`` = loader-fed / model-only.

    On a CPU the augmentation shares the model's cores, so the ratio depends on how heavy the model is: the
    tiny benchmark model is the worst case; resnet18 (a model that learns real dermoscopy, ~30 images/s here)
    is measured beside it as ``cpu_resnet18``.
    """
    data = Prepared.open(data_dir)
    rates = feed_rates(data, scale.model, scale, device, scale.train_steps)
    ratio = rates["loader"] / rates["memory"]
    extra: dict[str, Any] = {}
    if device.type == "cpu" and scale.model != CPU_REFERENCE_MODEL:
        reference = feed_rates(data, CPU_REFERENCE_MODEL, scale, device, CPU_REFERENCE_STEPS)
        extra["cpu_resnet18"] = {
            "memory_images_per_s": reference["memory"],
            "loader_images_per_s": reference["loader"],
            "ratio": reference["loader"] / reference["memory"],
        }
    return {
        "name": "train_step",
        "unit": "images/s",
        "device": str(device),
        "model": scale.model,
        "image_size": data.image_size,
        "batch_size": scale.batch_size,
        "bf16_autocast": device.type == "cuda",
        "timed_steps": scale.train_steps,
        "repeats": scale.repeats,
        "memory_images_per_s": rates["memory"],
        "loader_images_per_s": rates["loader"],
        "ratio": ratio,
        "ratio_definition": "loader_images_per_s / memory_images_per_s",
        **target_fields(ratio, TARGET, at_least=True),
        **extra,
    }


def run(quick: bool) -> dict[str, Any]:
    return run_on_synthetic(measure, quick)


def describe(result: dict[str, Any]) -> str:
    return "\n".join([
        f"train step: {result['model']} at {result['image_size']} px, batch {result['batch_size']}, on "
        f"{result['device']}{' (bf16 autocast)' if result['bf16_autocast'] else ''}",
        f"  fed from memory (model only): {result['memory_images_per_s']:.1f} images/s",
        f"  fed by the crossderm loader : {result['loader_images_per_s']:.1f} images/s",
        f"  ratio: {result['ratio']:.3f} (target >= {result['target']:g}: "
        f"{'met' if result['meets_target'] else 'NOT met'})",
        *([f"  resnet18 on the same cores: memory {result['cpu_resnet18']['memory_images_per_s']:.1f}, loader "
           f"{result['cpu_resnet18']['loader_images_per_s']:.1f} images/s, ratio {result['cpu_resnet18']['ratio']:.3f}"]
          if "cpu_resnet18" in result else []),
    ])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data set and model input, fewer steps")
    print(describe(run(parser.parse_args().quick)))
