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


def test_torchrun_two_processes_match_single_process(synth_prepared: Path, tmp_path: Path) -> None:
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    run_cv(load_config("demo_b_joint", [*EXACT, "batch_size=32"]), synth_prepared, single_dir, folds=[0])

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "crossderm",
        "cv",
        "--config",
        "demo_b_joint",
        "--data",
        str(synth_prepared),
        "--out",
        str(ddp_dir),
        "--fold",
        "0",
        "--device",
        "cpu",
        *[f"--set={o}" for o in [*EXACT, "batch_size=16"]],
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]

    fold = ddp_dir / "fold_0"
    assert sorted(p.name for p in fold.iterdir()) == [
        "best.safetensors",
        "checkpoint",
        "history.csv",
        "model.json",
        "predictions.csv",
        "val_predictions.csv",
    ]
    assert not list(ddp_dir.rglob(".*"))  # no staging folders or temp files left by a second writer
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
