"""Benchmark: images/s of the torch and ONNX Runtime backends of ``crossderm predict`` on the CPU.

Both backends get the same decoded images (real HAM10000 images from /work/shared/data when present, otherwise
synthetic 600x450 JPEGs; 16 with ``--quick``, 96 otherwise), batch size 32, 4-view TTA and the same number of
threads. Each is warmed up on a small batch, then the two alternate batch by batch so they share the machine's
load and their ratio holds on a busy CPU. Models have random weights (speed does not depend on training), written
as a normal run folder and loaded through ``Ensemble`` / ``crossderm export`` like real ones. Headline
(``ratio``): the paper's ``convnext_tiny`` at 224 px, one fold (a k-fold ensemble costs k times as much on both
backends). Also measured: the demo model ``test_convnext`` at 48 px with 5 folds, and the shared decode step.
Run as ``python benchmarks/bench_backends.py [--quick]`` with the package importable.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from crossderm.cli import main
from crossderm.fsutil import sha256_file
from crossderm.imaging import load_image
from crossderm.labels import CLASSES
from crossderm.models.card import ModelCard, write_card
from crossderm.models.factory import count_parameters, create_model, normalisation
from crossderm.predict.ensemble import Ensemble
from crossderm.predict.onnx_backend import OnnxEnsemble

HAM_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "HAM10000" / "HAM10000_images"
BATCH_SIZE = 32
WARMUP_IMAGES = 4
VIEWS = 4
SETUPS = {"paper": ("convnext_tiny", 224, 1), "demo": ("test_convnext", 48, 5)}


def make_run(run_dir: Path, model_name: str, image_size: int, folds: int) -> None:
    """A run folder of randomly initialised folds with the model cards inference reads."""
    for fold in range(folds):
        torch.manual_seed(fold)
        model = create_model(model_name, num_classes=len(CLASSES))
        fold_dir = run_dir / f"fold_{fold}"
        fold_dir.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, fold_dir / "best.safetensors")
        mean, std = normalisation(model)
        write_card(fold_dir / "model.json", ModelCard(
            experiment="benchmark", fold=fold, model=model_name, classes=list(CLASSES), image_size=image_size,
            mean=list(mean), std=list(std), tta=VIEWS, parameters=count_parameters(model), weights="best.safetensors",
            sha256=sha256_file(fold_dir / "best.safetensors"), best_epoch=0, val_score=0.0,
        ))


def image_paths(n: int, folder: Path) -> tuple[list[Path], str]:
    """``n`` real HAM10000 images if present, else ``n`` synthetic JPEGs written to ``folder``."""
    if HAM_IMAGES.is_dir():
        real = sorted(HAM_IMAGES.glob("*.jpg"))[:n]
        if len(real) == n:
            return real, f"HAM10000 ({HAM_IMAGES})"
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"synthetic_{i:04d}.jpg"
        Image.fromarray(rng.integers(0, 256, (450, 600, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths, "synthetic 600x450 JPEGs"


def interleaved_rates(
    predictors: dict[str, Ensemble | OnnxEnsemble], pixels: np.ndarray, repeats: int
) -> dict[str, float]:
    """Images/s of each predictor over ``pixels`` in batches of BATCH_SIZE, best of ``repeats`` passes.

    The backends alternate batch by batch, so both see the same load on a shared machine and their ratio holds.
    """
    for predictor in predictors.values():
        predictor.predict(pixels[:WARMUP_IMAGES], VIEWS)
    best = dict.fromkeys(predictors, float("inf"))
    for _ in range(repeats):
        spent = dict.fromkeys(predictors, 0.0)
        for i in range(0, len(pixels), BATCH_SIZE):
            for name, predictor in predictors.items():
                start = time.perf_counter()
                predictor.predict(pixels[i : i + BATCH_SIZE], VIEWS)
                spent[name] += time.perf_counter() - start
        best = {name: min(best[name], spent[name]) for name in predictors}
    return {name: len(pixels) / seconds for name, seconds in best.items()}


def measure(setup: str, paths: list[Path], work: Path, repeats: int) -> dict[str, Any]:
    model_name, size, folds = SETUPS[setup]
    run_dir, onnx_file = work / setup, work / f"{setup}.onnx"
    make_run(run_dir, model_name, size, folds)
    with contextlib.redirect_stdout(io.StringIO()):
        if main(["export", "--model", str(run_dir), "--out", str(onnx_file)]) != 0:
            raise RuntimeError(f"crossderm export of {setup} failed")
    start = time.perf_counter()
    pixels = np.stack([np.asarray(load_image(p, size)) for p in paths])
    decode_s = time.perf_counter() - start
    predictors = {"torch": Ensemble(run_dir), "onnx": OnnxEnsemble(onnx_file, threads=torch.get_num_threads())}
    rates = interleaved_rates(predictors, pixels, repeats)
    return {"model": model_name, "image_size": size, "folds": folds, "decode_img_per_s": len(paths) / decode_s,
            "torch_img_per_s": rates["torch"], "onnx_img_per_s": rates["onnx"], "ratio": rates["onnx"] / rates["torch"]}


def run(quick: bool) -> dict[str, Any]:
    """Both setups; ``ratio`` is ONNX Runtime images/s over torch images/s for the paper model."""
    n_images = 16 if quick else 96
    repeats = 1 if quick else 2
    with tempfile.TemporaryDirectory() as tmp:
        paths, source = image_paths(n_images, Path(tmp))
        results = {setup: measure(setup, paths, Path(tmp), repeats) for setup in SETUPS}
    paper = results["paper"]
    return {
        "name": "backends",
        "images": source,
        "n_images": n_images,
        "batch_size": BATCH_SIZE,
        "tta_views": VIEWS,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "torch_img_per_s": paper["torch_img_per_s"],
        "onnx_img_per_s": paper["onnx_img_per_s"],
        "ratio": paper["ratio"],
        "setups": results,
    }


def describe(result: dict[str, Any]) -> str:
    lines = [
        f"backends: {result['n_images']} images ({result['images']}), batch {result['batch_size']}, "
        f"{result['tta_views']}-view TTA, {result['threads']} CPU threads, best of {result['repeats']}"
    ]
    for setup, r in result["setups"].items():
        lines.append(
            f"  {setup}: {r['model']} {r['image_size']} px x {r['folds']} fold(s): torch {r['torch_img_per_s']:.1f} "
            f"img/s, onnxruntime {r['onnx_img_per_s']:.1f} img/s (ratio {r['ratio']:.2f}); "
            f"decode {r['decode_img_per_s']:.0f} img/s"
        )
    lines.append(f"  ratio (paper model, onnx / torch): {result['ratio']:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 images, one timed pass (default 96 images, best of 2)")
    print(describe(run(parser.parse_args().quick)))
