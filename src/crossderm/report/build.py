"""``crossderm report``: runs -> summary.json, tables, plots -> one report folder, written atomically.

Each run's own numbers are copied from its metrics.json; the only new statistics are the comparisons of
every later run with the first (:mod:`crossderm.evaluate.compare`, paired over the shared images), and the
per-site / subgroup cells a run's metrics.json lacks (:mod:`crossderm.report.groups`, computed from its oof
predictions exactly as ``crossderm evaluate --by`` would). An ablation folder (``--ablation``) adds the table and
plot that ``crossderm ablate`` computed (:mod:`crossderm.report.ablation`).
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
from crossderm.fsutil import atomic_directory, check_writable_folder
from crossderm.report.ablation import ablation_table, load_ablation, plot_ablation
from crossderm.report.groups import RunGroups, collect_groups, group_tables, summary_entry
from crossderm.report.paper import load_publication
from crossderm.report.plots import build_plots
from crossderm.report.render import FIGURES, render_html, render_markdown
from crossderm.report.runs import Run, load_runs, report_sources
from crossderm.report.tables import build_tables, ci_note_of, format_value


def run_gaps(run: Run, reference_source: str) -> dict[str, dict[str, Any]]:
    """The run's gaps against ``reference_source``: metrics.json's, or, for another reference, what
    ``crossderm evaluate`` would write for it (same per-source resamples, so the same CIs)."""
    if run.metrics["reference_source"] == reference_source:
        gaps = run.metrics["gaps"]
    else:
        setup = run.metrics["bootstrap"]
        gaps = compute_metrics(run.predictions, setup["n_resamples"], setup["seed"], reference_source, by=())["gaps"]
    return {pair: {m: gap.get(m) for m in COMPARISON_METRICS} for pair, gap in gaps.items()}


def build_summary(
    runs: list[Run], reference_source: str, groups: dict[str, RunGroups] | None = None
) -> dict[str, Any]:
    """summary.json: each run's headline numbers and gaps (and, with ``groups``, its per-site headline values,
    site_summary, subgroups and site matrix), then every later run against the first."""
    groups = groups or {}
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
            **(summary_entry(groups[run.name]) if run.name in groups else {}),
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
        sites = entry.get("site_summary")
        if sites:
            worst = sites["worst_site"]
            lines.append(
                f"{name}: {HEADLINE_METRICS[GAIN_METRIC]} mean over {len(sites['sites'])} sites "
                f"{format_value(sites['mean_macro_f1'])}, worst site {worst['site']} {format_value(worst['macro_f1'])}"
            )
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
    ablation = summary.get("ablation")
    for name, entry in (ablation or {}).get("site_summary", {}).items():
        if "delta" in entry:
            lines.append(f"ablation {name} - {ablation['baseline']}: mean-site macro-F1 "
                         f"{format_value(entry['delta']['mean_macro_f1'], signed=True)}, worst site "
                         f"{format_value(entry['delta']['min_macro_f1'], signed=True)} (paired)")
    return "\n".join(lines) + "\n"


def write_report(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    overwrite: bool = False,
    reference_source: str | None = None,
    by: Sequence[str] = (),
    ablation: str | Path | None = None,
) -> dict[str, Any]:
    """Load the runs, compare each with the first, and write the report folder in one atomic step.

    ``reference_source`` is the source every gap is measured from; None = the first run's metrics.json's.
    ``by``: subgroup tables to add (sex, age_bin, anatom_site); the per-site table is there whenever a run has
    sites. ``ablation``: a ``crossderm ablate`` folder; its table and plot come first, and its variants' run
    folders (baseline first) are the runs when ``run_dirs`` is empty.
    """
    check_writable_folder(out, "--out")
    if Path(out).is_dir() and any(Path(out).iterdir()) and not overwrite:
        raise CrossdermError(f"{Path(out).absolute()}: exists and is not empty (pass --overwrite to replace it)")
    study = None if ablation is None else load_ablation(ablation)
    if study is not None and not run_dirs:
        run_dirs = study.run_dirs
    runs = load_runs(run_dirs)
    if reference_source is None:
        reference_source = runs[0].metrics["reference_source"]
    elif reference_source not in report_sources(runs):
        raise CrossdermError(
            f"reference source {reference_source!r} is not a test source of any run "
            f"(they have {', '.join(report_sources(runs))})"
        )
    groups = {run.name: collect_groups(run, by) for run in runs}
    summary = build_summary(runs, reference_source, groups)
    tables = build_tables(runs, summary, load_publication(), group_tables(runs, groups, by, ci_note_of(summary)))
    plots = build_plots(runs, summary["bootstrap"]["ci"], groups)
    if study is not None:
        summary["ablation"] = {"path": str(study.path), **study.results}
        tables.insert(0, ablation_table(study))
        plot = plot_ablation(study)
        plots = plots if plot is None else [plot, *plots]
    with atomic_directory(out, overwrite=overwrite) as staging:
        (staging / FIGURES).mkdir()
        for plot in plots:
            (staging / FIGURES / plot.filename).write_bytes(plot.png)
        (staging / "report.md").write_text(render_markdown(runs, tables, plots))
        (staging / "report.html").write_text(render_html(runs, tables, plots))
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
