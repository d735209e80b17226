"""GPU check: ConvNeXt-Tiny 224 px training throughput with each input feed, TTA cost, and a short real training.

Meant for a bare GPU machine with torch and timm but no internet and no crossderm install: run it as
``bash benchmarks/gpu_check.sh [--compile]`` from the repository checkout (``PYTHONPATH=src``). It
1. checks the Python packages crossderm imports and fails fast with the list of missing ones;
2. writes a synthetic data set of real ~600 x 450 px JPEGs and prepares its 224 px cache;
3. times training steps (bf16 autocast, channels_last, fused AdamW, optionally ``torch.compile``) fed
   (i) from batches already on the GPU (model only), (ii) by ``CacheBatches`` with the cache resident on
   the GPU, augmentation on the GPU, (iii) by a conventional Pillow + torchvision ``DataLoader`` with workers;
4. times 4-view TTA against 1 view;
5. trains fold 0 of the joint experiment for a few epochs through the real engine (``FoldTrainer``: epochs,
   validation, checkpoints, best weights, 4-view TTA test predictions) on the prepared images, each listed
   several times so that an epoch has the protocol's ~18,000 images (a throughput check: the repeated
   images make its scores meaningless).
6. projects the whole paper protocol (2 experiments x 5 folds, every preset epoch) from the engine's training
   rate (last epoch of 5.) and the TTA rates, as ``benchmarks/projection.py`` does.
Goals on one H100: model-only >= 2,500 images/s, loader-fed >= 95 % of it, 4-view TTA <= 4.2x 1 view,
whole protocol in under an hour.
``--cpu-smoke`` shrinks everything (tiny images, a tiny model, CPU) to check the script itself anywhere.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported for real only after the package check
    import pandas as pd
    import torch
    from common import Batch, Prepared, Scale

# import name -> distribution name: everything ``crossderm.prepare`` / ``crossderm.train`` import
REQUIRED = {
    "numpy": "numpy",
    "torch": "torch",
    "torchvision": "torchvision",
    "timm": "timm",
    "PIL": "pillow",
    "pandas": "pandas",
    "sklearn": "scikit-learn",
    "scipy": "scipy",
    "pywt": "PyWavelets",
    "imagehash": "imagehash",
    "yaml": "pyyaml",
    "safetensors": "safetensors",
    "tqdm": "tqdm",
}
GOAL_MODEL_ONLY = 2500.0  # ConvNeXt-Tiny 224 px training images/s on one H100
GOAL_LOADER_SHARE = 0.95
GOAL_TTA = 4.2
GOAL_PROTOCOL_HOURS = 1.0  # both experiments, 5 folds each, on one GPU
PROTOCOL_IMAGES = 25_331  # HAM10000 + ISIC-only images: the joint experiment's data set size


def missing_packages() -> list[str]:
    """Distributions whose import fails here (a module present but broken counts as missing)."""
    missing = []
    for module, distribution in REQUIRED.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(distribution)
    return missing


def missing_message(missing: list[str]) -> str:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return "\n".join([
        f"gpu_check: missing Python packages: {', '.join(missing)}",
        "  This machine cannot download them. On a connected machine, in the repository root, fetch their wheels:",
        f"    python3 -m pip download --no-deps --only-binary=:all: --python-version {version} --implementation cp \\",
        "      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\",
        f"      -d .whl {' '.join(missing)}",
        "  then bring the .whl folder along: benchmarks/gpu_check.sh installs .whl/*.whl into a temporary folder",
        "  (offline, nothing else is touched) before it starts. See benchmarks/README.md.",
    ])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny data and model on CPU: checks the script only")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (minutes of compilation)")
    parser.add_argument("--batch-size", type=int, help="training batch size (default 64, the paper preset's)")
    parser.add_argument("--steps", type=int, help="timed training steps per feed and round (default 50)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the short real training (default 2)")
    parser.add_argument("--workers", type=int, help="workers of the conventional JPEG loader (default: CPU cores, "
                        "at most 16)")
    parser.add_argument("--work", type=Path, help="folder for the generated data and the run "
                        "(default benchmarks/_work/gpu_check)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_packages()
    if missing:
        print(missing_message(missing), file=sys.stderr)
        return 2
    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible (use --cpu-smoke for a dry run on CPU)", file=sys.stderr)
        return 2
    report = check(args)
    print(summary(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def check(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement of the check; returns the report."""
    import bench_tta
    import projection
    import torch
    from bench_input_pipeline import jpeg_batches, jpeg_loader
    from bench_train_step import Stepper, crossderm_feed, memory_batches, step_rates
    from common import GPU_CHECK, TINY, WORK, Prepared, bench_model, machine, synthetic_data

    from crossderm.models.factory import normalisation

    smoke = args.cpu_smoke
    device = torch.device("cpu" if smoke else "cuda")
    scale = TINY if smoke else GPU_CHECK
    scale = replace(scale, batch_size=args.batch_size or scale.batch_size, train_steps=args.steps or scale.train_steps)
    workers = args.workers or min(16, os.cpu_count() or 1)
    work = args.work or WORK / ("gpu_check_smoke" if smoke else "gpu_check")

    started = time.perf_counter()
    data_dir = synthetic_data(scale, work)
    data = Prepared.open(data_dir)
    data_seconds = time.perf_counter() - started
    print(f"data: {len(data.rows)} images in {data_dir} ({data_seconds:.0f} s)", flush=True)

    model = bench_model(scale.model, device)
    mean, std = normalisation(model)
    train_model = torch.compile(model) if args.compile else model
    loader = data.batches(scale.batch_size, device, model)
    loader_feed = crossderm_feed(loader, scale.train_steps)
    in_memory = memory_batches(loader_feed(0), 4)

    def naive_feed(seed: int) -> Iterator[Batch]:
        jpegs = jpeg_loader(data, data.image_size, mean, std, scale.batch_size,
                            (scale.train_steps + 1) * scale.batch_size, workers, device.type == "cuda", seed)
        return jpeg_batches(jpegs, device)

    feeds = {"model_only": lambda seed: itertools.cycle(in_memory), "loader": loader_feed, "naive_jpeg": naive_feed}
    print(f"timing training steps: {scale.model} {data.image_size} px, batch {scale.batch_size}, "
          f"{scale.train_steps} steps x {scale.repeats} rounds per feed ...", flush=True)
    rates = step_rates(Stepper(train_model, device), feeds, scale.train_steps, scale.warmup_steps, scale.repeats)

    print("timing TTA ...", flush=True)
    tta = bench_tta.measure(data_dir, scale, device)
    print("short training through the engine ...", flush=True)
    training = short_training(data, scale, device, args, work)
    protocol = projection.project(
        projection.Rates(f"gpu_check: {scale.model} {data.image_size} px, batch {scale.batch_size}, the engine's "
                         "last training epoch and the TTA timings", scale.model, training["epochs"][-1]["images_per_s"],
                         tta["views1_images_per_s"], tta["views4_images_per_s"]),
        projection.protocol_flops(),
    )
    return {
        "machine": machine(),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "model": scale.model,
        "image_size": data.image_size,
        "batch_size": scale.batch_size,
        "compile": args.compile,
        "bf16_autocast": device.type == "cuda",
        "images": len(data.rows),
        "data_seconds": round(data_seconds, 1),
        "gpu_resident_cache": loader.on_device is not None,
        "naive_jpeg_workers": workers,
        "step_images_per_s": rates,
        "loader_share": rates["loader"] / rates["model_only"],
        "naive_share": rates["naive_jpeg"] / rates["model_only"],
        "tta": {key: tta[key] for key in ("views1_images_per_s", "views4_images_per_s", "ratio")},
        "training": training,
        "protocol_projection": protocol,
        "seconds": round(time.perf_counter() - started, 1),
    }


def expanded_manifest(manifest: pd.DataFrame, copies: int) -> pd.DataFrame:
    """``copies`` listings of every image (same cache row, distinct ids and lesion groups, same fold)."""
    import pandas as pd

    frames = []
    for copy in range(copies):
        frame = manifest.copy()
        for column in ("image_id", "lesion_id", "lesion_group"):
            frame[column] = frame[column].astype(str) + f"~{copy}"
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def short_training(data: Prepared, scale: Scale, device: torch.device, args: argparse.Namespace,
                   work: Path) -> dict[str, Any]:
    """Fold 0 of the joint experiment through the engine (``crossderm.train.fold``), on the repeated images."""
    from crossderm.labels import CLASSES
    from crossderm.runfolder import RunFolder
    from crossderm.runtime import Runtime
    from crossderm.train.config import load_config
    from crossderm.train.fold import setup_fold, train_fold
    from crossderm.train.outputs import predict_fold

    overrides = ["pretrained=false", f"model={scale.model}", f"epochs={args.epochs}", f"batch_size={scale.batch_size}",
                 f"eval_batch_size={scale.eval_batch_size}", f"compile={str(args.compile).lower()}"]
    config = load_config("paper_b_joint_convnext_tiny", overrides)
    copies = 2 if args.cpu_smoke else math.ceil(PROTOCOL_IMAGES / len(data.manifest))
    manifest = expanded_manifest(data.manifest, copies)
    folder = RunFolder(work).fold(0)
    shutil.rmtree(folder.path, ignore_errors=True)
    folder.path.mkdir(parents=True)
    runtime = Runtime.resolve(device.type)
    started = time.perf_counter()
    setup = setup_fold(config, manifest, data.cache, 0, runtime)
    state = train_fold(setup, folder, resume=False)
    predictions = predict_fold(setup, folder, state)
    seconds = time.perf_counter() - started
    probabilities = predictions[list(CLASSES)].to_numpy()
    if not (abs(probabilities.sum(axis=1) - 1) < 1e-3).all():
        raise RuntimeError("test predictions are not probability rows")
    return {
        "preset": config.name,
        "copies_of_each_image": copies,
        "train_images_per_epoch": len(setup.data.train),
        "val_images": len(setup.data.val),
        "test_images": len(predictions),
        "tta_views": config.tta,
        "epochs": [{"epoch": row["epoch"], "images_per_s": row["images_per_s"], "seconds": row["seconds"]}
                   for row in state["history"]],
        "best_weights": folder.best_weights.is_file(),
        "seconds": round(seconds, 1),
    }


def _goal(value: float, goal: float, at_least: bool) -> str:
    return "met" if (value >= goal if at_least else value <= goal) else "MISSED"


def summary(report: dict[str, Any]) -> str:
    rates, training, protocol = report["step_images_per_s"], report["training"], report["protocol_projection"]
    smoke = report["device"] == "cpu"
    model_goal = "(goal applies to an H100 only)" if smoke else (
        f"goal >= {GOAL_MODEL_ONLY:,.0f}: {_goal(rates['model_only'], GOAL_MODEL_ONLY, True)}")
    protocol_goal = "(goal applies to a GPU only)" if smoke else (
        f"goal < {GOAL_PROTOCOL_HOURS:g} h: {_goal(protocol['total_hours'], GOAL_PROTOCOL_HOURS, False)}")
    hours = {key: e["hours"] for key, e in protocol["experiments"].items()}
    epochs = ", ".join(f"{e['images_per_s']:,.0f}" for e in training["epochs"])
    return "\n".join([
        f"gpu_check on {report['device']}: {report['model']} {report['image_size']} px, batch {report['batch_size']}, "
        f"bf16 {report['bf16_autocast']}, compile {report['compile']}",
        f"  model only (batches already on the device): {rates['model_only']:9,.0f} images/s  {model_goal}",
        f"  crossderm loader ({'GPU-resident' if report['gpu_resident_cache'] else 'host'} cache, device augmentation):"
        f" {rates['loader']:9,.0f} images/s = {report['loader_share']:.1%} of model only "
        f"(goal >= {GOAL_LOADER_SHARE:.0%}: {_goal(report['loader_share'], GOAL_LOADER_SHARE, True)})",
        f"  naive JPEG DataLoader ({report['naive_jpeg_workers']} workers): {rates['naive_jpeg']:9,.0f} images/s "
        f"= {report['naive_share']:.1%} of model only",
        f"  TTA: 1 view {report['tta']['views1_images_per_s']:,.0f} images/s, 4 views "
        f"{report['tta']['views4_images_per_s']:,.0f} images/s: {report['tta']['ratio']:.2f}x "
        f"(goal <= {GOAL_TTA}: {_goal(report['tta']['ratio'], GOAL_TTA, False)})",
        f"  engine, fold 0 of {training['preset']}: {training['train_images_per_epoch']:,} train images/epoch, "
        f"epochs at {epochs} images/s; {training['test_images']:,} test images predicted with "
        f"{training['tta_views']} views; {training['seconds']:.0f} s in all",
        f"  whole paper protocol at these rates (2 experiments x 5 folds, every preset epoch): "
        f"{protocol['total_hours'] * 60:,.0f} min ((a) {hours['a'] * 60:,.0f}, (b) {hours['b'] * 60:,.0f})  "
        f"{protocol_goal}",
        f"  whole check: {report['seconds']:.0f} s (data {report['data_seconds']:.0f} s)",
    ])


if __name__ == "__main__":
    raise SystemExit(main())
