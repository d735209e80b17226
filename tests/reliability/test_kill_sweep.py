"""``benchmarks/kill_sweep.py`` with a small budget (one kill point per command, on the session's synthetic data):
every point it tries ends byte-identical with no stray file. The longer sweep's figures are in docs/reliability.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SWEEP = Path(__file__).resolve().parents[2] / "benchmarks" / "kill_sweep.py"


@pytest.mark.slow
def test_kill_sweep_small_budget(synth_raw: Path, synth_prepared: Path, synth_run: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"  # the layout the sweep builds, from the fixtures (read, never written)
    inputs.mkdir()
    for name, target in (("raw", synth_raw), ("data", synth_prepared), ("run", synth_run)):
        (inputs / name).symlink_to(target, target_is_directory=True)
    out = tmp_path / "sweep.json"  # --points bounds it (~4 min on 2 quiet cores); the budget only a starved CPU
    done = subprocess.run([sys.executable, str(SWEEP), "--seed", "1", "--points", "1", "--minutes", "30",
                           "--inputs", str(inputs), "--work", str(tmp_path / "work"), "--json", str(out)],
                          capture_output=True, text=True, timeout=2400)
    assert out.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(out.read_text())
    points = [p for command in summary["commands"].values() for p in command["points"]]
    assert done.returncode == 0 and summary["failed"] == 0, done.stdout[-3000:]
    assert set(summary["commands"]) == {"prepare", "cv", "pool", "export", "predict"}
    assert len(points) == 5 and all(p["ok"] for p in points)  # one point per command
    assert all(command["kill_points"] for command in summary["commands"].values())  # every command writes
