"""The report's tables as cells: one per test source (Table 1), the gaps, the comparisons, per-class F1.

Cells are text, formatted once here, so the Markdown and the HTML show exactly the same numbers. Sources
and (reference, other) pairs come from the runs, never from a fixed list; the paper's rows join every
table they have numbers for, marked as context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from crossderm.evaluate.compare import COMPARISON_METRICS, GAIN_METRIC
from crossderm.evaluate.metrics import HEADLINE_METRICS, gap_name
from crossderm.labels import CLASSES
from crossderm.report import paper
from crossderm.report.paper import Publication, PublishedExperiment
from crossderm.report.runs import Run, gap_sources, report_sources

Row = tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """One table, rendered both to Markdown and to HTML; without a header it is only a titled note."""

    title: str
    header: Row
    rows: list[Row]
    note: str = ""
    text_columns: int = 1
    context_rows: list[Row] = field(default_factory=list)  # published numbers, shown apart from ours


def source_label(source: str) -> str:
    return f"{source}-test"


def format_value(entry: dict[str, Any] | None, percent: bool = False, signed: bool = False) -> str:
    """``value [low, high]``: 4 decimals, or % (pp when signed) with 2 decimals; "n/a" where undefined."""
    if entry is None or entry.get("value") is None:
        return "n/a"
    scale, spec = (100.0, ".2f") if percent else (1.0, ".4f")
    spec = ("+" if signed else "") + spec
    text = format(entry["value"] * scale, spec)
    if entry.get("ci_low") is not None and entry.get("ci_high") is not None:
        text += f" [{entry['ci_low'] * scale:{spec}}, {entry['ci_high'] * scale:{spec}}]"
    return text + (" %" if percent and not signed else " pp" if percent else "")


def _relative(entry: dict[str, Any] | None) -> str:
    return "n/a" if entry is None or entry["relative"] is None else f"{entry['relative']:+.1f} %"


def _point(value: float | None, metric: str, signed: bool = False) -> str:
    return format_value(None if value is None else {"value": value}, percent=metric != "macro_f1", signed=signed)


def _paper_name(publication: Publication, experiment: PublishedExperiment) -> str:
    return f"{publication.label}: {experiment.name}"


def _paper_pairs(publication: Publication) -> list[tuple[PublishedExperiment, PublishedExperiment]]:
    """Each later published experiment against the first, as our runs are against the first run."""
    baseline, *others = publication.experiments
    return [(baseline, other) for other in others]


def _keep_informative(rows: list[Row]) -> list[Row]:
    """Paper rows with at least one number after the name; a row of only n/a says nothing."""
    return [row for row in rows if any(cell != "n/a" for cell in row[1:])]


def source_table(runs: list[Run], source: str, publication: Publication, ci_note: str) -> Table:
    """Table 1 of one test source: every run that tests on it, then the paper's rows for it."""
    rows = [
        (
            run.name,
            run.model,
            f"{run.parameters / 1e6:.3g}",
            " + ".join(run.train_sources),
            run.sampler,
            str(run.metrics["sources"][source]["n"]),
        )
        + tuple(format_value(run.metrics["sources"][source].get(m), percent=m != "macro_f1") for m in HEADLINE_METRICS)
        for run in runs
        if source in run.sources
    ]
    context = [
        (
            _paper_name(publication, e),
            e.model,
            f"{e.parameters_m}",
            " + ".join(e.train_sources),
            e.sampler or "n/a",
            "n/a",
        )
        + tuple(format_value(e.published(source, m), percent=m != "macro_f1") for m in HEADLINE_METRICS)
        for e in publication.experiments
        if e.publishes(source)
    ]
    return Table(
        f"Table 1 ({source_label(source)}): headline metrics",
        ("experiment", "model", "params (M)", "train sources", "sampler", "images", *HEADLINE_METRICS.values()),
        rows,
        f"Value [{ci_note}] from each run's metrics.json; n/a = not reported."
        + (
            f" Rows marked '{publication.label}' are the published numbers ({publication.citation}), for context only."
            if context
            else ""
        ),
        text_columns=5,
        context_rows=context,
    )


def gap_table(runs: list[Run], summary: dict[str, Any], publication: Publication, ci_note: str) -> Table:
    """The generalisation gap of every run, one column group per (reference, other) pair."""
    reference = summary["reference_source"]
    others = gap_sources(runs, reference)
    title = f"Generalisation gap ({reference} - each other test source)"
    if not others:
        return Table(
            title,
            (),
            [],
            f"No gap: no run tests on the reference source {reference!r} and another "
            "source (choose the reference with --reference-source).",
        )
    pairs = [gap_name(reference, other) for other in others]
    rows = [
        (
            name,
            *(
                format_value(entry["gaps"].get(pair, {}).get(m), percent=m == "accuracy", signed=True)
                for pair in pairs
                for m in COMPARISON_METRICS
            ),
        )
        for name, entry in summary["experiments"].items()
    ]
    context = [
        (
            _paper_name(publication, e),
            *(_point(e.gap(reference, other, m), m, signed=True) for other in others for m in COMPARISON_METRICS),
        )
        for e in publication.experiments
    ]
    return Table(
        title,
        ("experiment", *(f"{pair} {HEADLINE_METRICS[m]}" for pair in pairs for m in COMPARISON_METRICS)),
        rows,
        f"Value [{ci_note}, the two test sets resampled independently]; accuracy in percentage points (pp); "
        "n/a = the run lacks one of the two sources.",
        context_rows=_keep_informative(context),
    )


def _paired_note(summary: dict[str, Any]) -> str:
    setup = summary["bootstrap"]
    return (
        f"Value [{setup['ci']:.0%} CI from a paired bootstrap: {setup['n_resamples']} resamples, seed "
        f"{setup['seed']}; each resample holds the same images for both runs]. "
    )


def _derived_note(publication: Publication, context: list[Row]) -> str:
    return f" '{publication.label}' rows are derived from the published point values (no CI)." if context else ""


def _reduction_cells(entry: dict[str, dict[str, Any] | None]) -> Row:
    """(reduction, relative) per comparison metric: accuracy in pp."""
    return tuple(
        cell
        for m in COMPARISON_METRICS
        for cell in (format_value(entry[m], percent=m == "accuracy", signed=True), _relative(entry[m]))
    )


def reduction_table(summary: dict[str, Any], other: str, publication: Publication) -> Table | None:
    """One gap pair: every later run's gap reduction against the first run (None if no comparison has it)."""
    reference = summary["reference_source"]
    pair = gap_name(reference, other)
    rows = [
        (key, *_reduction_cells(c["gap_reduction"][pair]))
        for key, c in summary["comparisons"].items()
        if pair in c["gap_reduction"]
    ]
    if not rows:
        return None
    context = _keep_informative(
        [
            (f"{publication.label}: {b.name} vs {a.name}",)
            + _reduction_cells({m: paper.reduction(a, b, reference, other, m) for m in COMPARISON_METRICS})
            for a, b in _paper_pairs(publication)
        ]
    )
    header = [(f"{HEADLINE_METRICS[m]} gap reduction", "relative") for m in COMPARISON_METRICS]
    return Table(
        f"Gap reduction ({pair}) against the reference run {summary['reference']!r}",
        ("comparison", *(cell for cells in header for cell in cells)),
        rows,
        _paired_note(summary) + "Reduction = reference run's gap - other run's gap; relative = % of the reference "
        "run's gap; accuracy in pp. A comparison covers only the sources both runs have."
        + _derived_note(publication, context),
        context_rows=context,
    )


def gain_table(summary: dict[str, Any], publication: Publication) -> Table:
    """Every later run's macro-F1 gain over the first run, per non-reference source."""
    comparisons, reference = summary["comparisons"], summary["reference_source"]
    title = f"{HEADLINE_METRICS[GAIN_METRIC]} gain (other run - reference run {summary['reference']!r})"
    sources = list(dict.fromkeys(s for c in comparisons.values() for s in c["macro_f1_gain"]))
    if not sources:
        return Table(title, (), [], f"No gain: the runs share no test source but the reference source {reference!r}.")
    rows = [
        (key, *(format_value(c["macro_f1_gain"].get(s), signed=True) for s in sources))
        for key, c in comparisons.items()
    ]
    context = _keep_informative(
        [
            (
                f"{publication.label}: {b.name} vs {a.name}",
                *(_point(paper.gain(a, b, s, GAIN_METRIC), GAIN_METRIC, signed=True) for s in sources),
            )
            for a, b in _paper_pairs(publication)
        ]
    )
    return Table(
        title,
        ("comparison", *(f"{source_label(s)} gain" for s in sources)),
        rows,
        _paired_note(summary) + f"Every test source except the reference source {reference!r}; n/a = not tested "
        "by both runs." + _derived_note(publication, context),
        context_rows=context,
    )


def comparison_tables(runs: list[Run], summary: dict[str, Any], publication: Publication) -> list[Table]:
    """Per gap pair, every later run's gap reduction against the first run; then the per-source gains."""
    if not summary["comparisons"]:
        note = "Only one run: nothing to compare (of two or more runs, each later one is compared with the first)."
        return [Table("Comparisons", (), [], note)]
    tables = [reduction_table(summary, other, publication) for other in gap_sources(runs, summary["reference_source"])]
    return [*(t for t in tables if t is not None), gain_table(summary, publication)]


def per_class_table(runs: list[Run], ci_note: str) -> Table:
    """Table 2: per-class F1 of every run on each of its sources."""
    columns = [(run, source) for run in runs for source in run.sources]
    rows = [
        (name, *(format_value((run.metrics["sources"][s].get("per_class_f1") or {}).get(name)) for run, s in columns))
        for name in CLASSES
    ]
    return Table(
        "Table 2: per-class F1",
        ("class", *(f"{run.name} {source_label(s)}" for run, s in columns)),
        rows,
        f"F1 [{ci_note}]; n/a = class absent from that test set.",
    )


def calibration_table(runs: list[Run]) -> Table | None:
    """ECE before/after temperature scaling of the runs that have a calibration.json."""
    calibrated = [run for run in runs if run.calibration]
    if not calibrated:
        return None
    rows = [
        (
            run.name,
            source_label(source),
            f"{info['ece_before']:.4f}",
            f"{info['ece_after']:.4f}",
            ", ".join(f"{t:.2f}" for t in run.calibration["temperature"].values()),
        )
        for run in calibrated
        for source, info in run.calibration["sources"].items()
    ]
    return Table(
        "Calibration: expected calibration error of the out-of-fold predictions",
        ("experiment", "test set", "ECE before", "ECE after", "temperature per fold"),
        rows,
        f"Top-label ECE, {calibrated[0].calibration['n_bins']} equal-width bins. Temperature scaling of the "
        "log-probabilities, fitted per fold on its inner validation split only (never on test images).",
        text_columns=2,
    )


def ci_note_of(summary: dict[str, Any]) -> str:
    return f"{summary['bootstrap']['ci']:.0%} percentile-bootstrap CI over images"


def build_tables(
    runs: list[Run], summary: dict[str, Any], publication: Publication, group_tables: Sequence[Table] = ()
) -> list[Table]:
    """Every table of the report, in reading order; ``group_tables`` (per site, subgroups, site matrices)
    after the per-class table."""
    ci_note = ci_note_of(summary)
    tables = [source_table(runs, source, publication, ci_note) for source in report_sources(runs)]
    tables += [gap_table(runs, summary, publication, ci_note), *comparison_tables(runs, summary, publication)]
    tables += [per_class_table(runs, ci_note), *group_tables]
    calibration = calibration_table(runs)
    return tables if calibration is None else [*tables, calibration]
