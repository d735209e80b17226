"""Cross-validated experiments: every fold of one config, then the pooled out-of-fold evaluation.

A run folder (its layout: :mod:`crossderm.runfolder`) is filled fold by fold; once every fold is done,
``oof_predictions.csv`` is pooled and evaluated with the same code as ``crossderm evaluate``.
Folds can run one per job (``--fold k``), in any order or in parallel; ``pool`` joins them.
"""

from __future__ import annotations

import contextlib
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import yaml

from crossderm import __version__
from crossderm.datafolder import PreparedData, load_dataset
from crossderm.defaults import N_BOOTSTRAP, REFERENCE_SOURCE
from crossderm.errors import CrossdermError
from crossderm.fsutil import (
    atomic_write_json,
    atomic_write_text,
    check_writable_folder,
    exclusive_lock,
    recover_directory,
    remove_stale_staging,
)
from crossderm.models.factory import check_model_name
from crossderm.runfolder import FoldFolder, RunFolder
from crossderm.runtime import Runtime, barrier, tune_cpu_allocator
from crossderm.train.config import ExperimentConfig, training_settings
from crossderm.train.engine import has_checkpoint
from crossderm.train.fold import setup_fold, starting_state, train_fold
from crossderm.train.outputs import predict_fold
from crossderm.train.pooling import pool
from crossderm.train.protocols import Job, jobs
from crossderm.train.tracking import Tracker, TrackingOptions, open_tracker


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
    from crossderm.runtime import thread_source

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
        "cpu_threads_source": thread_source(),  # --threads, OMP_NUM_THREADS, or auto and what limited it
        "world_size": runtime.world_size,
        "bf16_autocast": runtime.bf16,
    }


def check_same_run(run: RunFolder, config: ExperimentConfig, data_dir: Path) -> None:
    """Once any fold has started, another config or another DATA_DIR for the same run folder is refused (a run
    that failed before its first epoch may be retried with a corrected one); only ``only_folds`` may change."""
    if not any(has_checkpoint(f) or f.finished for f in run.folds()):
        return
    if run.config.is_file():
        try:
            recorded_config = yaml.safe_load(run.config.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise CrossdermError(f"{run.config}: not a readable config ({' '.join(str(exc).split())[:120]}); "
                                 "use a new --out") from None
        if not isinstance(recorded_config, dict) or training_settings(recorded_config) != training_settings(
            config.to_dict()
        ):
            raise CrossdermError(f"{run.config}: this run folder was made with a different config; use a new --out")
    if run.run_info.is_file():
        recorded = run.read_run_info().get("data")
        if recorded and Path(recorded) != data_dir.absolute():
            raise CrossdermError(f"{run.run_info}: this run folder was trained on {recorded}, not "
                                 f"{data_dir.absolute()}; use a new --out")


def scope_fields(jobs: list[Job]) -> dict:
    """The fields of ``run.json`` that say which folds the run has (what ``pool`` waits for and pools)."""
    return {
        "folds": [job.fold for job in jobs],
        "jobs": {str(job.fold): job.name for job in jobs},
        "job_sites": {str(job.fold): job.site for job in jobs if job.site is not None},
    }


def record_scope(run: RunFolder, config: ExperimentConfig, data_dir: Path) -> bool:
    """Rewrite ``run``'s config and folds for ``config`` (an ``only_folds`` widened after its folds were all
    there, so no training call rewrote them); True if they changed, so the run must be pooled again."""
    fields = scope_fields(jobs(load_dataset(data_dir).manifest, config))
    info = run.read_run_info()
    if all(info.get(key) == value for key, value in fields.items()):
        return False
    check_same_run(run, config, data_dir)
    atomic_write_text(run.config, yaml.safe_dump(config.to_dict(), sort_keys=False))
    atomic_write_json(run.run_info, {**info, **fields})
    return True


def _write_run_files(
    run: RunFolder, config: ExperimentConfig, data_dir: Path, jobs: list[Job], runtime: Runtime, parameters: int
) -> None:
    """Record the resolved config and the data once; once any fold has started, another config or another
    DATA_DIR for the same run folder is refused (a run that failed before its first epoch may be retried)."""
    check_same_run(run, config, data_dir)
    atomic_write_text(run.config, yaml.safe_dump(config.to_dict(), sort_keys=False))
    atomic_write_json(
        run.run_info,
        {
            "experiment": config.name,
            "data": str(data_dir.absolute()),
            "protocol": config.protocol,
            **scope_fields(jobs),
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
    tracking: TrackingOptions | None = None,
) -> dict | None:
    """Train the requested folds (all by default); pool and evaluate when every fold is done.

    ``tracking``: TensorBoard / MLflow (crossderm.train.tracking); None = none (the ``cv`` command's default is
    TensorBoard on).
    """
    check_writable_folder(run_dir, "--out")
    data = load_dataset(data_dir)
    cache = data.open_cache(config.color_constancy)
    runtime = Runtime.resolve(device, config.amp)
    if runtime.device.type == "cpu":
        tune_cpu_allocator()
    run = RunFolder(run_dir)
    all_jobs = jobs(data.manifest, config)
    known = [job.fold for job in all_jobs]
    unknown = [fold for fold in folds or [] if fold not in known]
    if unknown:
        raise CrossdermError(f"fold {unknown[0]} does not exist (folds: {known})")
    check_model_name(config.model)
    check_same_run(run, config, data_dir)
    with open_tracker(run, config.to_dict(), tracking, runtime.is_main) as tracker:
        for fold in folds if folds is not None else [job.fold for job in all_jobs]:
            folder = run.fold(fold)
            if folder.finished:
                if runtime.is_main:
                    print(f"fold {fold}: already done ({folder.predictions})")
                continue
            with fold_lock(folder, runtime):
                _run_fold(config, data, cache, data_dir, run, all_jobs, fold, resume, runtime, tracker)
        missing = [job.fold for job in all_jobs if not run.fold(job.fold).finished]
        if missing or not runtime.is_main:
            if runtime.is_main:
                print(f"folds still to run: {missing}; run them, then `crossderm pool {run_dir}`")
            return None
        return pool(run_dir, n_bootstrap=n_bootstrap, reference_source=reference_source, tracker=tracker)


@contextlib.contextmanager
def fold_lock(folder: FoldFolder, runtime: Runtime) -> Iterator[None]:
    """Rank 0 holds the fold's lock while it trains: a second `cv` on the same fold is refused at once (folds
    run as separate jobs lock different folds). Once the lock is ours, a killed writer's interrupted checkpoint
    replacement is repaired and its staging files removed."""
    if not runtime.is_main:
        yield
        return
    with exclusive_lock(folder.path, f"crossderm cv, fold {folder.fold}"):
        recover_directory(folder.checkpoint)
        remove_stale_staging(folder.path)
        yield


def _run_fold(config: ExperimentConfig, data: PreparedData, cache: np.ndarray, data_dir: Path, run: RunFolder,
              all_jobs: list[Job], fold: int, resume: bool, runtime: Runtime, tracker: Tracker) -> None:
    """Set up, train and predict one fold (rank 0 writes its files)."""
    folder = run.fold(fold)
    started = time.perf_counter()
    setup = setup_fold(config, data.manifest, cache, fold, runtime)
    state = starting_state(setup, folder, resume)
    if runtime.is_main:
        folder.path.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(run.path, "crossderm cv, writing config.yaml and run.json", wait=True):
            remove_stale_staging(run.path)  # a killed writer's temporary files (parallel fold jobs wait here)
            _write_run_files(run, config, Path(data_dir), all_jobs, runtime, setup.parameters)
        sizes = {part: len(getattr(setup.data, part)) for part in ("train", "val", "test", "external")}
        print(
            f"{config.name} fold {fold} ({setup.data.job.name}): "
            + ", ".join(f"{part} {n}" for part, n in sizes.items() if n or part != "external")
            + f" images; {config.model} ({setup.parameters / 1e6:.2f} M parameters) on {runtime.device}"
            + (f" x{runtime.world_size}" if runtime.world_size > 1 else "")
        )
    state = train_fold(setup, folder, resume, tracker, state)
    predictions = predict_fold(setup, folder, state)
    if runtime.is_main:
        atomic_write_text(folder.predictions, predictions.to_csv(index=False))
        tracker.end_fold(fold, run, state)
        print(f"fold {fold}: done in {time.perf_counter() - started:.1f} s, best epoch {state['best_epoch']}")
    barrier()
