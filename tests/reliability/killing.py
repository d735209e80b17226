"""Shared by the fault-injection tests (``test_kill.py``) and ``benchmarks/kill_sweep.py``: run crossderm (killed
through ``kill_runner.py`` or not), digest an output folder, find stray files, and build the tiny synthetic data
(the same sizes as the session fixtures of ``tests/conftest.py``)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

RUNNER = Path(__file__).with_name("kill_runner.py")
TINY = ["--set=model=test_efficientnet", "--set=epochs=3", "--set=batch_size=32", "--set=channels_last=false",
        "--set=tta=2", "--no-tensorboard", "--threads", "1"]
TIMING = ("images_per_s", "seconds")
KILLED = -9  # the return code of a process ended by SIGKILL


def crossderm(*args: str, kill: tuple[str, float] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m crossderm ARGS``; with ``kill=(mode, value)`` through ``kill_runner.py`` (``replace N``: SIGKILL
    at the N-th ``os.replace``, ``time S``: after S seconds, ``count 0``: no kill, print the calls)."""
    prefix = [sys.executable, str(RUNNER), kill[0], str(kill[1]), "--"] if kill else [sys.executable, "-m", "crossderm"]
    return subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=timeout)


def digest(root: Path) -> dict[str, str]:
    """sha256 of every output file below ``root`` (history.csv without its timing columns; lock files skipped)."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".lock"):
        if path.name == "history.csv":
            data = pd.read_csv(path).drop(columns=list(TIMING)).to_csv(index=False).encode()
        elif path.name == "state.json":  # the checkpoint's progress: its history rows carry the same timings
            state = json.loads(path.read_text())
            state["history"] = [{k: v for k, v in row.items() if k not in TIMING} for row in state["history"]]
            data = json.dumps(state, sort_keys=True).encode()
        elif path.name == "run.json":
            continue  # the environment record (timings, thread source) may differ between processes
        else:
            data = path.read_bytes()
        out[str(path.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return out


def strays(root: Path) -> list[Path]:
    """What a killed writer may leave below ``root``: hidden staging folders, ``.old`` backups, ``.tmp`` files
    (every crossderm temporary is a dot-name; lock files are meant to stay)."""
    return sorted(p for p in root.rglob(".*") if p.suffix != ".lock")


def replace_calls(*args: str) -> list[str]:
    """The destination of every ``os.replace`` of an uninterrupted ``crossderm ARGS``, in order: its kill points."""
    result = crossderm(*args, kill=("count", 0))
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    calls = [line.split(" -> ", 1)[1] for line in lines if line.startswith("os.replace #")]
    assert int(lines[-1].split(": ")[1]) == len(calls), lines[-5:]
    return calls


def replace_count(*args: str) -> int:
    return len(replace_calls(*args))


def make_synth_raw(out: Path) -> Path:
    """A small synthetic download in the official layouts (both sources), as the ``synth_raw`` fixture."""
    from crossderm.synth.generator import generate

    generate(out, ham_lesions=120, isic_lesions=120, seed=0, image_scale=0.5)
    return out


def make_prepared(raw: Path, out: Path) -> Path:
    """``raw`` prepared at 32 px, 5 lesion-grouped folds, as the ``synth_prepared`` fixture."""
    from crossderm.prepare.pipeline import PrepareConfig, prepare

    prepare(PrepareConfig(out=out, ham=raw / "HAM10000", isic=raw / "ISIC2019", image_size=32, workers=1))
    return out


def make_run(prepared: Path, out: Path) -> Path:
    """A finished 5-fold run (tiny model, one epoch) of the joint experiment, as the ``synth_run`` fixture."""
    from crossderm.train.config import load_config
    from crossderm.train.cv import run_cv

    training = ["model=test_efficientnet", "epochs=1", "batch_size=32", "eval_batch_size=128", "lr=3e-3",
                "channels_last=false"]
    run_cv(load_config("demo_b_joint", training), prepared, out, n_bootstrap=200)
    return out
