"""DistributedDataParallel for real: torchrun, 2 CPU processes, gloo backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from crossderm.labels import CLASSES
from crossderm.train.config import load_config
from crossderm.train.cv import run_cv

# LayerNorm model, no augmentation randomness, no dropout: a DDP step over 2 x 16 images is then the same
# optimisation step as one process over the same 32 images, up to floating-point summation order and the
# one image the sampler repeats to pad an odd epoch to two equal shards. Adam turns such tiny gradient
# differences into visible (~1e-2) probability differences after 16 steps, hence the tolerances below.
EXACT = [
    "model=test_convnext",
    "epochs=2",
    "eval_batch_size=128",
    "lr=5e-4",
    "channels_last=false",
    "tta=2",
    "augment.flips=false",
    "augment.rotate90=false",
    "augment.min_area=1.0",
    "augment.brightness=0",
    "augment.contrast=0",
    "augment.saturation=0",
    "augment.channel_gain=0",
]


def _torchrun(
    entry: list[str], prepared: Path, out: Path, overrides: list[str], *extra: str
) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 <entry> cv ... --fold 0`` on CPU, one thread per process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        *entry,
        "cv",
        "--config",
        "demo_b_joint",
        "--data",
        str(prepared),
        "--out",
        str(out),
        "--fold",
        "0",
        "--device",
        "cpu",
        *[f"--set={o}" for o in overrides],
        *extra,
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)


def test_torchrun_two_processes_match_single_process(synth_prepared: Path, tmp_path: Path) -> None:
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    run_cv(load_config("demo_b_joint", [*EXACT, "batch_size=32"]), synth_prepared, single_dir, folds=[0])

    result = _torchrun(["-m", "crossderm"], synth_prepared, ddp_dir, [*EXACT, "batch_size=16"])
    assert result.returncode == 0, result.stderr[-3000:]

    fold = ddp_dir / "fold_0"
    assert sorted(p.name for p in fold.iterdir()) == [
        "best.safetensors",
        "checkpoint",
        "history.csv",
        "model.json",
        "ood.safetensors",
        "predictions.csv",
        "val_predictions.csv",
    ]
    leftovers = [p for p in ddp_dir.rglob(".*") if p.suffix != ".lock"]  # the fold's lock file stays, empty of work
    assert not leftovers  # no staging folders or temp files left by a second writer
    assert json.loads((ddp_dir / "run.json").read_text())["environment"]["world_size"] == 2
    assert result.stdout.count("fold 0: done") == 1  # only rank 0 reports and writes

    single = pd.read_csv(single_dir / "fold_0" / "predictions.csv", dtype={"image_id": str})
    ddp = pd.read_csv(fold / "predictions.csv", dtype={"image_id": str})
    assert single["image_id"].tolist() == ddp["image_id"].tolist()
    assert np.abs(single[list(CLASSES)].to_numpy() - ddp[list(CLASSES)].to_numpy()).max() < 0.03
    history_single = pd.read_csv(single_dir / "fold_0" / "history.csv")
    history_ddp = pd.read_csv(fold / "history.csv")
    assert np.allclose(history_single["train_loss"], history_ddp["train_loss"], atol=5e-3)
    assert np.allclose(history_single["val_macro_f1"], history_ddp["val_macro_f1"], atol=0.02)


CRASH_IN_THIRD_EPOCH = """
import sys

from crossderm.cli import main
from crossderm.train import engine

original = engine.train_one_epoch
calls = []


def train_one_epoch(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
        raise KeyboardInterrupt
    return original(*args, **kwargs)


engine.train_one_epoch = train_one_epoch
sys.exit(main())
"""


def test_torchrun_resume_after_a_crash_matches_the_uninterrupted_run(synth_prepared: Path, tmp_path: Path) -> None:
    """Every rank stops in epoch 3; ``--resume`` restarts both from rank 0's checkpoint and ends exactly as a run
    that never stopped (same sample, same augmentation streams, same optimizer state on every rank)."""
    overrides = ["model=test_convnext", "epochs=3", "batch_size=16", "eval_batch_size=128", "channels_last=false"]
    whole = _torchrun(["-m", "crossderm"], synth_prepared, tmp_path / "whole", overrides)
    assert whole.returncode == 0, whole.stderr[-3000:]

    crashing = tmp_path / "crash_in_third_epoch.py"
    crashing.write_text(CRASH_IN_THIRD_EPOCH)
    crashed = _torchrun([str(crashing)], synth_prepared, tmp_path / "resumed", overrides)
    assert crashed.returncode != 0 and "interrupted" in crashed.stderr
    state = json.loads((tmp_path / "resumed" / "fold_0" / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 2 and not (tmp_path / "resumed" / "fold_0" / "predictions.csv").exists()

    resumed = _torchrun(["-m", "crossderm"], synth_prepared, tmp_path / "resumed", overrides, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "fold 0: resuming after epoch 2" in resumed.stdout
    expected = pd.read_csv(tmp_path / "whole" / "fold_0" / "predictions.csv", dtype={"image_id": str})
    actual = pd.read_csv(tmp_path / "resumed" / "fold_0" / "predictions.csv", dtype={"image_id": str})
    pd.testing.assert_frame_equal(expected, actual)
    history = pd.read_csv(tmp_path / "resumed" / "fold_0" / "history.csv")
    reference = pd.read_csv(tmp_path / "whole" / "fold_0" / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3]
    assert np.allclose(history["train_loss"], reference["train_loss"], rtol=0, atol=1e-6)
