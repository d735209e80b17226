"""Cross-validated experiments: every fold of one config, then the pooled out-of-fold evaluation.

A run folder (its layout: :mod:`crossderm.runfolder`) is filled fold by fold; once every fold is done,
``oof_predictions.csv`` is pooled and evaluated with the same code as ``crossderm evaluate``.
Folds can run one per job (``--fold k``), in any order or in parallel; ``pool`` joins them.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from crossderm import __version__
from crossderm.datafolder import load_dataset
from crossderm.defaults import BOOTSTRAP_SEED, N_BOOTSTRAP, REFERENCE_SOURCE
from crossderm.errors import CrossdermError
from crossderm.fsutil import atomic_write_json, atomic_write_text
from crossderm.runfolder import RunFolder
from crossderm.runtime import Runtime, barrier, tune_cpu_allocator
from crossderm.train.config import ExperimentConfig
from crossderm.train.fold import predict_fold, setup_fold, train_fold


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def environment(runtime: Runtime) -> dict:
    return {
        "crossderm": __version__,
        "git_revision": git_revision(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(runtime.device),
        "device_name": torch.cuda.get_device_name(runtime.device)
        if runtime.device.type == "cuda"
        else platform.processor(),
        "cpu_threads": torch.get_num_threads(),
        "world_size": runtime.world_size,
        "bf16_autocast": runtime.bf16,
    }


def _write_run_files(
    run: RunFolder, config: ExperimentConfig, data_dir: Path, folds: list[int], runtime: Runtime, parameters: int
) -> None:
    """Record the resolved config once; a different config in an existing run folder is refused."""
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    if run.config.is_file() and yaml.safe_load(run.config.read_text()) != config.to_dict():
        raise CrossdermError(f"{run.config}: this run folder was made with a different config; use a new --out")
    atomic_write_text(run.config, text)
    atomic_write_json(
        run.run_info,
        {
            "experiment": config.name,
            "data": str(data_dir.absolute()),
            "folds": folds,
            "parameters": parameters,
            "environment": environment(runtime),
        },
    )


def run_cv(
    config: ExperimentConfig,
    data_dir: Path,
    run_dir: Path,
    folds: list[int] | None = None,
    resume: bool = False,
    device: str = "auto",
    n_bootstrap: int = N_BOOTSTRAP,
    reference_source: str = REFERENCE_SOURCE,
) -> dict | None:
    """Train the requested folds (all by default); pool and evaluate when every fold is done."""
    data = load_dataset(data_dir)
    cache = data.open_cache()
    runtime = Runtime.resolve(device, config.amp)
    if runtime.device.type == "cpu":
        tune_cpu_allocator()
    run = RunFolder(run_dir)
    for fold in folds if folds is not None else data.folds:
        folder = run.fold(fold)
        if folder.finished:
            if runtime.is_main:
                print(f"fold {fold}: already done ({folder.predictions})")
            continue
        started = time.perf_counter()
        setup = setup_fold(config, data.manifest, cache, fold, runtime)
        if runtime.is_main:
            folder.path.mkdir(parents=True, exist_ok=True)
            _write_run_files(run, config, Path(data_dir), data.folds, runtime, setup.parameters)
            print(
                f"{config.name} fold {fold}: train {len(setup.data.train)}, val {len(setup.data.val)}, "
                f"test {len(setup.data.test)} images; {config.model} ({setup.parameters / 1e6:.2f} M parameters) "
                f"on {runtime.device}{' x' + str(runtime.world_size) if runtime.world_size > 1 else ''}"
            )
        state = train_fold(setup, folder, resume)
        predictions = predict_fold(setup, folder, state)
        if runtime.is_main:
            atomic_write_text(folder.predictions, predictions.to_csv(index=False))
            print(f"fold {fold}: done in {time.perf_counter() - started:.1f} s, best epoch {state['best_epoch']}")
        barrier()
    missing = [f for f in data.folds if not run.fold(f).finished]
    if missing or not runtime.is_main:
        if runtime.is_main:
            print(f"folds still to run: {missing}; run them, then `crossderm pool {run_dir}`")
        return None
    return pool(run_dir, n_bootstrap=n_bootstrap, reference_source=reference_source)


def pool(
    run_dir: Path,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
    reference_source: str = REFERENCE_SOURCE,
) -> dict:
    """Join the folds' test predictions into ``oof_predictions.csv`` and evaluate it."""
    from crossderm.evaluate.calibration import calibrate_run
    from crossderm.evaluate.predictions import evaluate_file

    run = RunFolder(run_dir).require()
    expected = run.expected_folds()
    missing = [k for k in expected if not run.fold(k).finished]
    if missing:
        raise CrossdermError(
            f"{run_dir}: fold(s) {', '.join(map(str, missing))} not finished; run `crossderm cv ... --fold k` for "
            "each, then pool again (pooling a subset would evaluate part of the data as if it were all)"
        )
    pooled = pd.concat([pd.read_csv(run.fold(k).predictions, dtype={"image_id": str}) for k in expected],
                       ignore_index=True)
    duplicated = pooled.duplicated(["source", "image_id"])
    if duplicated.any():
        raise CrossdermError(
            f"{run_dir}: image {pooled.loc[duplicated.idxmax(), 'image_id']} is predicted by two folds"
        )
    atomic_write_text(run.oof_predictions, pooled.to_csv(index=False))
    metrics, markdown = evaluate_file(run.oof_predictions, run.path, n_bootstrap, seed, reference_source)
    print(markdown, end="")
    calibration = calibrate_run(run_dir)
    for source, info in calibration["sources"].items():
        print(
            f"calibration {source}: ECE {info['ece_before']:.4f} -> {info['ece_after']:.4f} with per-fold temperature"
        )
    return metrics
