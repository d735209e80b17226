"""``benchmarks/serve_soak.py`` for ~10 s: mixed good and hostile uploads from 4 clients against a live server, no
wrong status for any request (every good one 200), server memory flat. The full 2-minute figures are in
docs/reliability.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_soak.py"


@pytest.mark.slow
def test_soak_10_seconds(synth_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    done = subprocess.run([sys.executable, str(SOAK), "--model", str(synth_run), "--seconds", "10", "--clients", "4",
                           "--slow-every", "5", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert out.is_file(), done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads(out.read_text())
    assert done.returncode == 0 and summary["ok"], json.dumps(summary, indent=1)[:4000]
    assert summary["unexpected_count"] == 0 and summary["good_errors"] == 0
    assert summary["status_counts"]["good"].get("200", 0) > 0
    assert len(summary["status_counts"]) >= 4, "several kinds of hostile upload were sent"
    assert summary["healthz_after"] == 200
    memory = summary["memory"]
    assert memory["samples"] > 5 and memory["server_growth_mib"] <= memory["server_growth_bound_mib"]
