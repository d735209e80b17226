"""Benchmark: batches/s of the crossderm loader against a conventional JPEG-decoding loader, same images.

crossderm: ``CacheBatches`` over the memory-mapped decode-once cache (one background gather thread) plus
``augment_batch`` on the device, exactly as ``crossderm.train.engine`` feeds a training step.
Conventional: a torch ``Dataset`` that opens and decodes the original JPEG with Pillow and resizes/augments
it with torchvision transforms on every access, in a ``DataLoader`` with one worker process (one background
worker each, as the target compares) - and, for reference, with one worker per CPU core.
Both draw the same number of random images, with the same batch size, from the same prepared data set.
Run as ``python benchmarks/bench_input_pipeline.py [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from common import (
    Batch,
    Prepared,
    Scale,
    bench_model,
    best_rates,
    random_order,
    run_on_synthetic,
    target_fields,
    timed_rate,
)
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchvision import transforms

from crossderm.models.factory import normalisation
from crossderm.train.augment import AugmentConfig

TARGET = 20.0  # crossderm batches/s over conventional batches/s, one background worker each


class RandomRotate90:
    """A random multiple of 90 degrees, as ``augment_batch`` applies (torchvision has no such transform)."""

    TURNS = (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)

    def __call__(self, image: Image.Image) -> Image.Image:
        turn = random.choice(self.TURNS)
        return image if turn is None else image.transpose(turn)


def conventional_transform(size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> transforms.Compose:
    """The usual torchvision recipe with the same augmentations as ``AugmentConfig()``'s defaults."""
    augment = AugmentConfig()
    return transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(augment.min_area, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.RandomVerticalFlip(),
        RandomRotate90(),
        transforms.ColorJitter(augment.brightness, augment.contrast, augment.saturation),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


class JpegDataset(Dataset):
    """Opens and decodes the original JPEG on every access: no cache, the conventional pipeline."""

    def __init__(self, paths: list[str], labels: list[int], transform: transforms.Compose) -> None:
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[index]) as image:
            rgb = image.convert("RGB")
        return self.transform(rgb), self.labels[index]


def jpeg_loader(data: Prepared, size: int, mean: tuple[float, ...], std: tuple[float, ...], batch_size: int,
                n_images: int, workers: int, pin_memory: bool, seed: int) -> DataLoader:
    """``n_images`` random images (with replacement) in batches, decoded by ``workers`` processes."""
    dataset = JpegDataset(data.paths, data.labels.tolist(), conventional_transform(size, mean, std))
    sampler = RandomSampler(dataset, replacement=True, num_samples=n_images,
                            generator=torch.Generator().manual_seed(seed))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin_memory)


def jpeg_batches(loader: DataLoader, device: torch.device) -> Iterator[Batch]:
    """The conventional loader's batches moved to the device in the model's layout, as a step would use them."""
    for images, labels in loader:
        yield (images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last),
               labels.to(device, non_blocking=True))


def jpeg_size(path: str) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def measure(data_dir: Path, scale: Scale, device: torch.device) -> dict[str, Any]:
    """Both loaders timed side by side; ``ratio`` = crossderm batches/s / conventional (1 worker) batches/s."""
    data = Prepared.open(data_dir)
    model = bench_model(scale.model, torch.device("cpu"))
    mean, std = normalisation(model)
    crossderm_loader = data.batches(scale.batch_size, device, model)
    all_cores = os.cpu_count() or 1
    round_seeds = iter(range(10**6))

    def crossderm_rate(augment: AugmentConfig | None) -> float:
        seed = next(round_seeds)
        order = random_order(len(data.rows), (scale.loader_batches + 1) * scale.batch_size, seed)
        generator = torch.Generator(device=device).manual_seed(seed)
        batches = crossderm_loader.batches(order, augment, generator)
        return timed_rate(batches, scale.loader_batches, lambda batch: None, device) / scale.batch_size

    def conventional_rate(workers: int) -> float:
        seed = next(round_seeds)
        loader = jpeg_loader(data, data.image_size, mean, std, scale.batch_size,
                             (scale.jpeg_batches + 1) * scale.batch_size, workers, device.type == "cuda", seed)
        rate = timed_rate(jpeg_batches(loader, device), scale.jpeg_batches, lambda batch: None, device)
        return rate / scale.batch_size

    measures = {
        "crossderm": lambda: crossderm_rate(AugmentConfig()),
        "crossderm_no_augment": lambda: crossderm_rate(None),
        "conventional": lambda: conventional_rate(1),
    }
    if all_cores > 1:
        measures["conventional_all_cores"] = lambda: conventional_rate(all_cores)
    rates = best_rates(measures, scale.repeats)
    ratio = rates["crossderm"] / rates["conventional"]
    jpeg_sides = [jpeg_size(path) for path in data.paths[:50]]
    result: dict[str, Any] = {
        "name": "input_pipeline",
        "unit": "batches/s",
        "device": str(device),
        "images": len(data.rows),
        "jpeg_mean_size": [round(sum(s[0] for s in jpeg_sides) / len(jpeg_sides)),
                           round(sum(s[1] for s in jpeg_sides) / len(jpeg_sides))],
        "image_size": data.image_size,
        "batch_size": scale.batch_size,
        "timed_batches": {"crossderm": scale.loader_batches, "conventional": scale.jpeg_batches},
        "repeats": scale.repeats,
        "crossderm_workers": "1 background thread (cache gather) + augmentation in the main thread",
        "conventional_workers": 1,
        "crossderm_batches_per_s": rates["crossderm"],
        "conventional_batches_per_s": rates["conventional"],
        "crossderm_no_augment_batches_per_s": rates["crossderm_no_augment"],
        "ratio": ratio,
        "ratio_definition": "crossderm_batches_per_s / conventional_batches_per_s (1 worker each)",
        **target_fields(ratio, TARGET, at_least=True),
    }
    if "conventional_all_cores" in rates:
        result["conventional_all_cores_workers"] = all_cores
        result["conventional_all_cores_batches_per_s"] = rates["conventional_all_cores"]
        result["ratio_vs_all_cores"] = rates["crossderm"] / rates["conventional_all_cores"]
    return result


def run(quick: bool) -> dict[str, Any]:
    return run_on_synthetic(measure, quick)


def describe(result: dict[str, Any]) -> str:
    width, height = result["jpeg_mean_size"]
    lines = [
        f"input pipeline: {result['images']} images (JPEGs ~{width}x{height} px) -> {result['image_size']} px "
        f"batches of {result['batch_size']} on {result['device']}",
        f"  crossderm (cache + augment_batch, 1 thread): {result['crossderm_batches_per_s']:.2f} batches/s",
        f"  crossderm without augmentation (gather + normalise only): "
        f"{result['crossderm_no_augment_batches_per_s']:.2f} batches/s",
        f"  conventional (Pillow + torchvision, 1 worker): {result['conventional_batches_per_s']:.2f} batches/s",
    ]
    if "ratio_vs_all_cores" in result:
        lines.append(f"  conventional with {result['conventional_all_cores_workers']} workers: "
                     f"{result['conventional_all_cores_batches_per_s']:.2f} batches/s "
                     f"(crossderm is {result['ratio_vs_all_cores']:.1f}x that)")
    lines.append(f"  speed-up: {result['ratio']:.1f}x (target >= {result['target']:g}x: "
                 f"{'met' if result['meets_target'] else 'NOT met'})")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data set and cache, fewer batches")
    print(describe(run(parser.parse_args().quick)))
