"""Cross-validated experiments: every fold of one config, then the pooled out-of-fold evaluation.

A run folder holds ``config.yaml`` (resolved), ``run.json`` (environment, git revision, parameters),
``fold_<k>/`` (checkpoint, best weights, history, ``predictions.csv``) and, once every fold is done,
``oof_predictions.csv`` with ``metrics.json`` from the same code as ``crossderm evaluate``.
Folds can run one per job (``--fold k``), in any order or in parallel; ``pool`` joins them.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
import yaml

from crossderm import __version__
from crossderm.errors import CrossdermError
from crossderm.fsutil import atomic_write_json, atomic_write_text, read_json
from crossderm.prepare.cache import open_cache
from crossderm.prepare.pipeline import load_dataset
from crossderm.train.config import ExperimentConfig
from crossderm.train.engine import FoldTrainer, Runtime

PREDICTIONS = "predictions.csv"


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
        "bf16_autocast": runtime.amp,
    }


def _write_run_files(
    run_dir: Path, config: ExperimentConfig, data_dir: Path, runtime: Runtime, parameters: int
) -> None:
    """Record the resolved config once; a different config in an existing run folder is refused."""
    config_path = run_dir / "config.yaml"
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    if config_path.is_file() and yaml.safe_load(config_path.read_text()) != config.to_dict():
        raise CrossdermError(f"{config_path}: this run folder was made with a different config; use a new --out")
    atomic_write_text(config_path, text)
    atomic_write_json(
        run_dir / "run.json",
        {
            "experiment": config.name,
            "data": str(data_dir.absolute()),
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
    n_bootstrap: int = 2000,
) -> dict | None:
    """Train the requested folds (all by default); pool and evaluate when every fold is done."""
    manifest, info = load_dataset(data_dir)
    cache = open_cache(Path(data_dir) / info["cache_file"])
    runtime = Runtime.resolve(device, config.amp)
    all_folds = sorted(int(f) for f in manifest["fold"].unique())
    for fold in folds if folds is not None else all_folds:
        fold_dir = run_dir / f"fold_{fold}"
        if (fold_dir / PREDICTIONS).is_file():
            if runtime.is_main:
                print(f"fold {fold}: already done ({fold_dir / PREDICTIONS})")
            continue
        started = time.perf_counter()
        trainer = FoldTrainer(config, manifest, cache, fold, fold_dir, runtime)
        if runtime.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            _write_run_files(run_dir, config, Path(data_dir), runtime, trainer.parameters)
            print(
                f"{config.name} fold {fold}: train {len(trainer.data.train)}, val {len(trainer.data.val)}, "
                f"test {len(trainer.data.test)} images; {config.model} ({trainer.parameters / 1e6:.2f} M parameters) "
                f"on {runtime.device}{' x' + str(runtime.world_size) if runtime.world_size > 1 else ''}"
            )
        predictions = trainer.run(resume=resume)
        if runtime.is_main:
            atomic_write_text(fold_dir / PREDICTIONS, predictions.to_csv(index=False))
            print(
                f"fold {fold}: done in {time.perf_counter() - started:.1f} s, best epoch {trainer.state['best_epoch']}"
            )
        if dist.is_initialized():
            dist.barrier()
    missing = [f for f in all_folds if not (run_dir / f"fold_{f}" / PREDICTIONS).is_file()]
    if missing or not runtime.is_main:
        if runtime.is_main:
            print(f"folds still to run: {missing}; run them, then `crossderm pool {run_dir}`")
        return None
    return pool(run_dir, n_bootstrap=n_bootstrap)


def pool(run_dir: Path, n_bootstrap: int = 2000, seed: int = 0) -> dict:
    """Join the folds' test predictions into ``oof_predictions.csv`` and evaluate it."""
    from crossderm.evaluate.calibration import calibrate_run
    from crossderm.evaluate.predictions import evaluate_file

    run_dir = Path(run_dir)
    fold_files = sorted(run_dir.glob(f"fold_*/{PREDICTIONS}"))
    if not fold_files:
        raise CrossdermError(f"{run_dir}: no fold predictions to pool (run `crossderm cv` first)")
    expected = _expected_folds(run_dir)
    missing = sorted(expected - {int(f.parent.name.removeprefix("fold_")) for f in fold_files})
    if missing:
        raise CrossdermError(
            f"{run_dir}: fold(s) {', '.join(map(str, missing))} not finished; run `crossderm cv ... --fold k` for "
            "each, then pool again (pooling a subset would evaluate part of the data as if it were all)"
        )
    pooled = pd.concat([pd.read_csv(f, dtype={"image_id": str}) for f in fold_files], ignore_index=True)
    duplicated = pooled.duplicated(["source", "image_id"])
    if duplicated.any():
        raise CrossdermError(
            f"{run_dir}: image {pooled.loc[duplicated.idxmax(), 'image_id']} is predicted by two folds"
        )
    oof = run_dir / "oof_predictions.csv"
    atomic_write_text(oof, pooled.to_csv(index=False))
    metrics, markdown = evaluate_file(oof, run_dir, n_bootstrap, seed)
    print(markdown, end="")
    calibration = calibrate_run(run_dir)
    for source, info in calibration["sources"].items():
        print(
            f"calibration {source}: ECE {info['ece_before']:.4f} -> {info['ece_after']:.4f} with per-fold temperature"
        )
    return metrics


def _expected_folds(run_dir: Path) -> set[int]:
    """The folds of the prepared data this run was trained on (``run.json`` names it)."""
    run_info = read_json(run_dir / "run.json", f"is {run_dir} a `crossderm cv` run folder?")
    _, info = load_dataset(run_info["data"])
    return set(range(int(info["folds"])))


def init_distributed() -> bool:
    """Join a torchrun job when launched by one (RANK/WORLD_SIZE set); NCCL on GPUs, gloo on CPU."""
    if "RANK" not in os.environ or dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend)
    return True
