"""The main job end to end at a tiny size: synth -> prepare -> both experiments (5-fold CV, TTA) -> report."""

from __future__ import annotations

import json
from pathlib import Path

from crossderm.cli import main


def test_demo_writes_both_runs_and_the_report(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--ham-lesions", "80", "--isic-lesions", "80", "--epochs", "1",
            "--image-size", "32", "--bootstrap", "100"]
    assert main(args) == 0
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert set(summary["experiments"]) == {"demo_a_ham_only", "demo_b_joint"}
    for experiment in summary["experiments"].values():
        for source in ("ham", "isic"):
            entry = experiment["test"][source]["macro_f1"]
            assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
        assert "value" in experiment["gaps"]["ham - isic"]["macro_f1"]
    comparison = summary["comparisons"]["demo_b_joint vs demo_a_ham_only"]
    assert "relative" in comparison["gap_reduction"]["ham - isic"]["macro_f1"]
    assert set(comparison["macro_f1_gain"]) == {"isic"}
    html = (out / "report" / "report.html").read_text()
    assert "Calibration" in html and "data:image/png;base64," in html
    for run in ("demo_a_ham_only", "demo_b_joint"):
        assert (out / "runs" / run / "calibration.json").is_file()
    # a second call finds every step done and only rewrites the report
    assert main(args) == 0
