"""Shared pieces of the benchmarks: sizes, synthetic data on disk, the benchmark model, timing, machine facts.

Every benchmark reads the same real JPEG files (written by ``crossderm.synth``) and the decode-once
cache that ``crossderm prepare`` builds from them, so the loaders compared see identical images.
Generated data lives under ``benchmarks/_work/`` (git-ignored) and is reused by later runs.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from crossderm.datafolder import load_dataset
from crossderm.labels import CLASSES, label_indices
from crossderm.models.factory import create_model, normalisation
from crossderm.models.preprocess import Normalise
from crossderm.prepare.pipeline import PrepareConfig, prepare
from crossderm.synth.generator import generate
from crossderm.train.loader import CacheBatches

WORK = Path(__file__).resolve().parent / "_work"
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Scale:
    """Sizes of one benchmark run (data, model, and how long each figure is timed)."""

    ham_lesions: int
    isic_lesions: int
    image_scale: float  # synth JPEG size: 3.75 gives 600 x 450 HAM images, as the real originals
    image_size: int  # the prepared cache's side, and the model's input
    model: str
    batch_size: int
    loader_batches: int  # timed batches of the crossderm loader per round
    jpeg_batches: int  # timed batches of the conventional JPEG loader per round
    train_steps: int  # timed training steps per feed and round
    eval_batches: int  # timed inference batches per view count and round
    eval_batch_size: int
    repeats: int  # rounds, interleaved; the best round of each side is kept (least disturbed by other load)
    warmup_steps: int = 2


QUICK = Scale(35, 35, 3.75, 112, "test_convnext", 32, 48, 8, 12, 6, 64, 3)
FULL = Scale(150, 100, 3.75, 224, "test_convnext", 32, 60, 12, 20, 4, 64, 3)
TINY = Scale(35, 35, 0.5, 32, "test_convnext", 8, 3, 2, 2, 2, 16, 1, warmup_steps=1)
GPU_MODEL = "convnext_tiny"  # what a CUDA run measures: the paper's experiment (b) model at 224 px
GPU_CHECK = Scale(35, 35, 3.75, 224, GPU_MODEL, 64, 0, 0, 50, 20, 256, 2, warmup_steps=10)  # gpu_check.py


def for_device(scale: Scale, device: torch.device) -> Scale:
    """On a GPU the benchmark model is the paper's ConvNeXt-Tiny at 224 px, batch 64 (its preset)."""
    if device.type != "cuda":
        return scale
    return replace(scale, image_size=224, model=GPU_MODEL, batch_size=64, eval_batch_size=128,
                   loader_batches=4 * scale.loader_batches, train_steps=4 * scale.train_steps, warmup_steps=5)


def auto_device() -> torch.device:
    """The device ``crossderm cv --device auto`` picks, set up the same way (CPU allocator tuning included)."""
    from crossderm.runtime import Runtime, tune_cpu_allocator

    device = Runtime.resolve().device
    if device.type == "cpu":
        tune_cpu_allocator()
    return device


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so a timer read afterwards covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device) -> AbstractContextManager:
    """bf16 autocast on CUDA, as the engine's ``Runtime`` chooses; none on CPU (it is slower there)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def synthetic_data(scale: Scale, work: Path = WORK, workers: int | None = None) -> Path:
    """A prepared DATA_DIR for ``scale`` (JPEGs + cache), generated once and reused."""
    raw = work / f"raw_h{scale.ham_lesions}_i{scale.isic_lesions}_x{scale.image_scale:g}"
    data = work / f"{raw.name}_s{scale.image_size}"
    if not (raw / "ISIC2019").is_dir():
        print(f"generating synthetic JPEGs into {raw} (once) ...", flush=True)
        generate(raw, ham_lesions=scale.ham_lesions, isic_lesions=scale.isic_lesions, image_scale=scale.image_scale,
                 overwrite=raw.exists())
    if not (data / "dataset.json").is_file():
        prepare(PrepareConfig(out=data, ham=raw / "HAM10000", isic=raw / "ISIC2019", image_size=scale.image_size,
                              workers=workers or os.cpu_count(), overwrite=data.exists()))
    return data


@dataclass
class Prepared:
    """One prepared DATA_DIR opened as training reads it."""

    manifest: pd.DataFrame
    cache: np.ndarray
    image_size: int

    @classmethod
    def open(cls, data_dir: Path) -> Prepared:
        data = load_dataset(data_dir)
        return cls(data.manifest, data.open_cache(), data.image_size)

    @property
    def rows(self) -> np.ndarray:
        return self.manifest["cache_index"].to_numpy()

    @property
    def labels(self) -> np.ndarray:
        return label_indices(self.manifest["label"])

    @property
    def paths(self) -> list[str]:
        return self.manifest["path"].tolist()

    def batches(self, batch_size: int, device: torch.device, model: torch.nn.Module,
                device_cache: bool | None = None) -> CacheBatches:
        """The crossderm loader over every image, normalised for ``model`` as the engine does."""
        mean, std = normalisation(model)
        return CacheBatches(self.cache, self.rows, self.labels, batch_size, device, Normalise(mean, std, True),
                            device_cache=device_cache)


def bench_model(name: str, device: torch.device) -> torch.nn.Module:
    """A freshly initialised model laid out as the engine trains it (channels_last, on the device)."""
    torch.manual_seed(0)
    return create_model(name, num_classes=len(CLASSES)).to(device).to(memory_format=torch.channels_last)


def random_order(n_rows: int, n_images: int, seed: int) -> torch.Tensor:
    """``n_images`` positions drawn with replacement, so a small image set feeds any number of steps."""
    return torch.randint(n_rows, (n_images,), generator=torch.Generator().manual_seed(seed))


def timed_rate(batches: Iterator[Batch], count: int, consume: Callable[[Batch], Any], device: torch.device) -> float:
    """Items/s of ``consume`` over ``count`` batches after one untimed batch (thread or worker start-up)."""
    consume(next(batches))
    synchronize(device)
    start = time.perf_counter()
    items = 0
    for _ in range(count):
        batch = next(batches)
        consume(batch)
        items += len(batch[1])
    synchronize(device)
    return items / (time.perf_counter() - start)


def best_rates(measures: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Run every measure once per round, rounds interleaved, and keep each one's best rate."""
    best = dict.fromkeys(measures, 0.0)
    for _ in range(repeats):
        for key, measure in measures.items():
            best[key] = max(best[key], measure())
    return best


def machine() -> dict[str, Any]:
    """What the figures were measured on; the load average shows whether other jobs shared the CPU."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        lines = cpuinfo.read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        cpu = names[0] if names else cpu
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    if hasattr(os, "getloadavg"):
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    return info


def target_fields(ratio: float, target: float, at_least: bool) -> dict[str, Any]:
    """The ``target``, ``target_kind`` and ``meets_target`` entries every benchmark result carries."""
    return {
        "target": target,
        "target_kind": "at least" if at_least else "at most",
        "meets_target": ratio >= target if at_least else ratio <= target,
    }


def run_on_synthetic(measure: Callable[[Path, Scale, torch.device], dict[str, Any]], quick: bool) -> dict[str, Any]:
    """Run ``measure`` on the auto device with the quick or full scale and its generated data set."""
    device = auto_device()
    scale = for_device(QUICK if quick else FULL, device)
    return measure(synthetic_data(scale), scale, device)
