"""``crossderm report``: runs -> summary.json, tables, plots -> one report folder, written atomically.

Each run's own numbers are copied from its metrics.json; the only new statistics are the comparisons of
every later run with the first (:mod:`crossderm.evaluate.compare`, paired over the shared images).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crossderm.errors import CrossdermError
from crossderm.evaluate.compare import COMPARISON_METRICS, GAIN_METRIC, paired_comparison
from crossderm.evaluate.metrics import HEADLINE_METRICS
from crossderm.evaluate.predictions import compute_metrics
from crossderm.fsutil import atomic_directory
from crossderm.report.paper import load_publication
from crossderm.report.plots import build_plots
from crossderm.report.render import FIGURES, render_html, render_markdown
from crossderm.report.runs import Run, load_runs, report_sources
from crossderm.report.tables import build_tables, format_value


def run_gaps(run: Run, reference_source: str) -> dict[str, dict[str, Any]]:
    """The run's gaps against ``reference_source``: metrics.json's, or, for another reference, what
    ``crossderm evaluate`` would write for it (same per-source resamples, so the same CIs)."""
    if run.metrics["reference_source"] == reference_source:
        gaps = run.metrics["gaps"]
    else:
        setup = run.metrics["bootstrap"]
        gaps = compute_metrics(run.predictions, setup["n_resamples"], setup["seed"], reference_source)["gaps"]
    return {pair: {m: gap.get(m) for m in COMPARISON_METRICS} for pair, gap in gaps.items()}


def build_summary(runs: list[Run], reference_source: str) -> dict[str, Any]:
    """summary.json: each run's headline numbers and gaps, then every later run against the first."""
    reference = runs[0]
    setup = {key: reference.metrics["bootstrap"][key] for key in ("n_resamples", "seed", "ci")}
    experiments = {
        run.name: {
            "run_dir": str(run.run_dir),
            "model": run.model,
            "parameters": run.parameters,
            "train_sources": run.train_sources,
            "sampler": run.sampler,
            "test": {s: {m: run.metrics["sources"][s].get(m) for m in HEADLINE_METRICS} for s in run.sources},
            "gaps": run_gaps(run, reference_source),
        }
        for run in runs
    }
    comparisons = {
        f"{other.name} vs {reference.name}": paired_comparison(
            reference.predictions,
            other.predictions,
            reference_source,
            **setup,
            names=(str(reference.run_dir), str(other.run_dir)),
        )
        for other in runs[1:]
    }
    return {
        "experiments": experiments,
        "reference": reference.name,
        "reference_source": reference_source,
        "bootstrap": {**setup, "method": "paired percentile"},
        "comparisons": comparisons,
    }


def render_text(summary: dict[str, Any]) -> str:
    """The few lines printed to stdout: macro-F1 per source and gap per pair, then each comparison."""
    lines = []
    for name, entry in summary["experiments"].items():
        cells = [f"{source} {format_value(values[GAIN_METRIC])}" for source, values in entry["test"].items()]
        cells += [f"gap {pair} {format_value(gap[GAIN_METRIC], signed=True)}" for pair, gap in entry["gaps"].items()]
        lines.append(f"{name}: {HEADLINE_METRICS[GAIN_METRIC]} " + ", ".join(cells))
    for key, comparison in summary["comparisons"].items():
        cells = []
        for pair, reduction in comparison["gap_reduction"].items():
            entry = reduction[GAIN_METRIC]
            relative = "" if entry["relative"] is None else f" ({entry['relative']:+.1f} % of the reference gap)"
            cells.append(
                f"{HEADLINE_METRICS[GAIN_METRIC]} gap reduction ({pair}) {format_value(entry, signed=True)}" + relative
            )
        cells += [
            f"{source} {HEADLINE_METRICS[GAIN_METRIC]} gain {format_value(gain, signed=True)}"
            for source, gain in comparison["macro_f1_gain"].items()
        ]
        lines.append(f"{key}: " + (", ".join(cells) or "no test source in common"))
    return "\n".join(lines) + "\n"


def write_report(
    run_dirs: Sequence[str | Path], out: str | Path, overwrite: bool = False, reference_source: str | None = None
) -> dict[str, Any]:
    """Load the runs, compare each with the first, and write the report folder in one atomic step.

    ``reference_source`` is the source every gap is measured from; None = the first run's metrics.json's.
    """
    runs = load_runs(run_dirs)
    if reference_source is None:
        reference_source = runs[0].metrics["reference_source"]
    elif reference_source not in report_sources(runs):
        raise CrossdermError(
            f"reference source {reference_source!r} is not a test source of any run "
            f"(they have {', '.join(report_sources(runs))})"
        )
    summary = build_summary(runs, reference_source)
    tables = build_tables(runs, summary, load_publication())
    plots = build_plots(runs, summary["bootstrap"]["ci"])
    with atomic_directory(out, overwrite=overwrite) as staging:
        (staging / FIGURES).mkdir()
        for plot in plots:
            (staging / FIGURES / plot.filename).write_bytes(plot.png)
        (staging / "report.md").write_text(render_markdown(runs, tables, plots))
        (staging / "report.html").write_text(render_html(runs, tables, plots))
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
