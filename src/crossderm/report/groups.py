"""The report's per-site, subgroup and site-matrix sections: data per run, summary.json entries and tables.

A run's cells come from its metrics.json (``sites``, ``site_summary``, ``subgroups``, ``site_matrix``); what
metrics.json lacks but the run's oof predictions have the column for is computed with the evaluate functions
(:func:`crossderm.evaluate.groups.group_metrics`, the run's own resamples and seed), so it equals what
``crossderm evaluate --by ...`` would write. Runs without a site column simply have no per-site rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from crossderm.defaults import MIN_GROUP_IMAGES
from crossderm.evaluate.groups import GROUP_COLUMN, group_metrics
from crossderm.evaluate.metrics import HEADLINE_METRICS
from crossderm.report.runs import Run
from crossderm.report.tables import Row, Table, format_value

Cells = dict[str, dict[str, Any]]
CELL_COLUMNS = ("n", "macro-F1", "accuracy")


@dataclass(frozen=True)
class RunGroups:
    """One run's group cells; empty / None where the run has none."""

    sites: Cells
    site_summary: dict[str, Any] | None
    subgroups: dict[str, Cells]  # the groupings asked with --by (other than site) that the run has
    site_matrix: dict[str, Cells] | None
    min_images: int = MIN_GROUP_IMAGES


def collect_groups(run: Run, by: Sequence[str]) -> RunGroups:
    """The run's sites (always, when it has them) and the subgroups of ``by``, from metrics.json or computed."""
    metrics, predictions = run.metrics, run.predictions
    wanted = [g for g in dict.fromkeys(by) if g != "site"]
    stored: dict[str, Cells] = metrics.get("subgroups") or {}
    need = ["site"] if "sites" not in metrics and "site" in predictions.columns else []
    need += [g for g in wanted if g not in stored and GROUP_COLUMN[g] in predictions.columns]
    setup = metrics["bootstrap"]
    computed = group_metrics(predictions, setup["n_resamples"], setup["seed"], need) if need else {}
    source = metrics if "sites" in metrics else computed
    subgroups = {**stored, **computed.get("subgroups", {})}
    rule = metrics.get("groups") or computed.get("groups") or {}
    return RunGroups(
        sites=source.get("sites") or {},
        site_summary=source.get("site_summary"),
        subgroups={g: subgroups[g] for g in wanted if g in subgroups},
        site_matrix=metrics.get("site_matrix") or None,
        min_images=int(rule.get("min_images", MIN_GROUP_IMAGES)),
    )


def headline(cell: dict[str, Any]) -> dict[str, Any]:
    """A cell's identity, n and headline metrics (summary.json); a too-few cell as it is."""
    if cell.get("too_few"):
        return dict(cell)
    identity = {k: v for k, v in cell.items() if isinstance(v, str | int) and not isinstance(v, bool)}
    return {**identity, **{m: cell.get(m) for m in HEADLINE_METRICS}}


def summary_entry(groups: RunGroups) -> dict[str, Any]:
    """summary.json additions of one run: ``sites`` ({} without), ``site_summary`` (None without), and
    ``subgroups`` / ``site_matrix`` when it has them."""
    entry: dict[str, Any] = {
        "sites": {key: headline(cell) for key, cell in groups.sites.items()},
        "site_summary": groups.site_summary,
    }
    if groups.subgroups:
        entry["subgroups"] = {g: {k: headline(c) for k, c in cells.items()} for g, cells in groups.subgroups.items()}
    if groups.site_matrix:
        entry["site_matrix"] = {
            train: {test: headline(c) for test, c in row.items()} for train, row in groups.site_matrix.items()
        }
    return entry


def too_few_text(cell: dict[str, Any]) -> str:
    return f"too few (n = {cell['n']})"


def cell_texts(cell: dict[str, Any] | None) -> Row:
    """(n, macro-F1 [CI], accuracy [CI] in %) of one cell; too few / n/a shown as such, never as 0."""
    if cell is None:
        return ("n/a",) * len(CELL_COLUMNS)
    if cell.get("too_few"):
        return (str(cell["n"]), too_few_text(cell), "too few")
    return (str(cell["n"]), format_value(cell.get("macro_f1")), format_value(cell.get("accuracy"), percent=True))


def _rule_note(groups: list[RunGroups]) -> str:
    minimum = min(g.min_images for g in groups)
    return (
        f"Cells with fewer than {minimum} images are shown as 'too few' without values; 'missing' = a blank "
        "value, its own group. Accuracy in %."
    )


def _cells_table(
    title: str, label: str, runs: list[Run], cells: dict[str, Cells], note: str, lacking: list[str]
) -> Table:
    keys = list(dict.fromkeys(key for run in runs for key in cells[run.name]))
    rows = [(key, *(text for run in runs for text in cell_texts(cells[run.name].get(key)))) for key in keys]
    header = (label, *(f"{run.name} {column}" for run in runs for column in CELL_COLUMNS))
    if lacking:
        note += f" Without this column (not shown): {', '.join(lacking)}."
    return Table(title, header, rows, note)


def site_table(runs: list[Run], groups: dict[str, RunGroups], ci_note: str) -> Table | None:
    """Rows = sites, one (n, macro-F1, accuracy) column group per run with sites; mean / worst / minimum rows."""
    with_sites = [run for run in runs if groups[run.name].sites]
    if not with_sites:
        return None
    table = _cells_table(
        "Per site: headline metrics",
        "site",
        with_sites,
        {run.name: groups[run.name].sites for run in with_sites},
        f"Value [{ci_note}], each site ('<source>/<site>') resampled on its own. "
        + _rule_note([groups[run.name] for run in with_sites])
        + " Mean over sites: unweighted, CI from the sites' resamples averaged. Worst site: the site with the lowest "
        "macro-F1, with its own CI. Minimum over sites: the same value, CI of the per-resample minimum over sites "
        "(it allows for another site being the worst in another sample). Both need two sites with enough images.",
        [run.name for run in runs if not groups[run.name].sites],
    )
    summary_rows: list[Row] = [("mean over sites",), ("worst site",), ("minimum over sites (per resample)",)]
    for run in with_sites:
        s, sites = groups[run.name].site_summary, groups[run.name].sites
        if s is None:
            cells: list[Row] = [("n/a", "n/a", "")] * 3
        else:
            worst = s["worst_site"]
            cells = [
                (f"{len(s['sites'])} sites", format_value(s["mean_macro_f1"]), ""),
                (str(sites[worst["site"]]["n"]), f"{format_value(worst['macro_f1'])} ({worst['site']})", ""),
                ("", format_value(s["min_macro_f1"]), ""),
            ]
        summary_rows = [row + cell for row, cell in zip(summary_rows, cells, strict=True)]
    return Table(table.title, table.header, [*table.rows, *summary_rows], table.note)


def subgroup_table(runs: list[Run], groups: dict[str, RunGroups], grouping: str, ci_note: str) -> Table:
    """Rows = ``<source>/<value>`` of ``grouping``, one column group per run that has the column."""
    title = f"Subgroups by {grouping}: headline metrics"
    having = [run for run in runs if grouping in groups[run.name].subgroups]
    if not having:
        return Table(title, (), [], f"No run's predictions have a {GROUP_COLUMN[grouping]!r} column.")
    return _cells_table(
        title,
        f"source/{grouping}",
        having,
        {run.name: groups[run.name].subgroups[grouping] for run in having},
        f"Value [{ci_note}], each group of each source resampled on its own. "
        + _rule_note([groups[run.name] for run in having]),
        [run.name for run in runs if grouping not in groups[run.name].subgroups],
    )


def matrix_tests(matrix: dict[str, Cells]) -> list[str]:
    return sorted({test for row in matrix.values() for test in row})


def site_matrix_table(run: Run, matrix: dict[str, Cells], ci_note: str) -> Table:
    """Rows = training site, columns = test site, macro-F1 [CI]; "-" = not predicted."""
    tests = matrix_tests(matrix)

    def text(cell: dict[str, Any] | None) -> str:
        if cell is None:
            return "-"
        return too_few_text(cell) if cell.get("too_few") else format_value(cell.get("macro_f1"))

    return Table(
        f"Site matrix of {run.name}: macro-F1 (rows = training site, columns = test site)",
        ("train \\ test", *tests),
        [(train, *(text(row.get(test)) for test in tests)) for train, row in matrix.items()],
        f"macro-F1 [{ci_note}] of each training site's model on each test site's images; '-' = not predicted; "
        f"too few = under {MIN_GROUP_IMAGES} images.",
    )


def group_tables(runs: list[Run], groups: dict[str, RunGroups], by: Sequence[str], ci_note: str) -> list[Table]:
    """Per-site table (when any run has sites), one subgroup table per --by grouping, each run's site matrix."""
    tables = [t for t in (site_table(runs, groups, ci_note),) if t is not None]
    tables += [subgroup_table(runs, groups, g, ci_note) for g in dict.fromkeys(by) if g != "site"]
    tables += [
        site_matrix_table(run, groups[run.name].site_matrix, ci_note) for run in runs if groups[run.name].site_matrix
    ]
    return tables
