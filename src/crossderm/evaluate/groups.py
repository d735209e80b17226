"""Per-site and per-subgroup metrics, and the train-site x test-site matrix (metrics.json ``sites``,
``site_summary``, ``subgroups``, ``groups`` and ``site_matrix``).

A *cell* is one group of one source, keyed ``"<source>/<value>"`` (site names repeat across sources, so a site is
always named with its source: ``"ham/rosendahl"``). A cell gets the same summary as a source
(:func:`~crossderm.evaluate.metrics.evaluate_source`) from its own bootstrap generator,
``source_rng(seed, name)``, with name = the site key for a site (``"ham/rosendahl"``), ``"<grouping>:<key>"`` for
a subgroup (``"sex:ham/female"``) and ``"<train site> -> <test site>"`` for a site-matrix cell; its rows are
sorted by image_id first. So a cell's numbers depend only on its own rows: not on row order, not on the other
cells, and adding cells leaves the per-source numbers unchanged.

Rules:

* **Too few images.** A cell with fewer than :data:`~crossderm.defaults.MIN_GROUP_IMAGES` (30) images is
  ``{"source", <grouping>, "n", "too_few": true}`` without metric values, shown as "too few (n = 12)".
* **Missing values** (a blank site, sex, anatom_site or age) form their own group, ``"missing"``: shown, never
  dropped. Other values are kept as written (e.g. HAM10000's ``unknown`` sex stays ``unknown``).
* **Age bins** (``age_bin``, derived from ``age`` in years): ``<30`` [0, 30), ``30-44`` [30, 45), ``45-59``
  [45, 60), ``60-74`` [60, 75), ``75+`` [75, ...), blank -> ``missing``.
* **AUC** of a cell is a point value without CI (``GROUP_AUC_CI``): the AUC bootstrap is ~90 % of the cost of an
  evaluation, and every grouping evaluates all images once more; the confusion-matrix metrics (macro-F1, accuracy,
  balanced accuracy, per-class F1/precision/recall) all get their full bootstrap CIs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from crossderm.defaults import GROUPINGS, MIN_GROUP_IMAGES
from crossderm.errors import CrossdermError
from crossderm.evaluate.metrics import HEADLINE_METRICS, SourceEvaluation, evaluate_source, interval
from crossderm.evaluate.predictions import source_rng
from crossderm.labels import CLASSES, label_indices

MISSING = "missing"
AGE_BIN_EDGES = (30, 45, 60, 75)
AGE_BINS = ("<30", "30-44", "45-59", "60-74", "75+")
# The column each grouping reads (age_bin is derived from age).
GROUP_COLUMN = {"site": "site", "sex": "sex", "age_bin": "age", "anatom_site": "anatom_site"}
GROUP_AUC_CI = False


def age_bins(ages: Iterable[Any]) -> np.ndarray:
    """Ages in years -> their bin label (:data:`AGE_BINS`), blank / NaN -> "missing"."""
    values = pd.to_numeric(pd.Series(list(ages), dtype=object), errors="coerce").to_numpy(dtype=np.float64)
    index = np.searchsorted(AGE_BIN_EDGES, values, side="right")  # 29.9 -> 0 (<30), 30 -> 1 (30-44)
    labels = np.array(AGE_BINS, dtype=object)[np.minimum(index, len(AGE_BINS) - 1)]
    labels[np.isnan(values)] = MISSING
    return labels


def group_values(table: pd.DataFrame, grouping: str) -> np.ndarray:
    """Each row's group value (str) for ``grouping``; blank or NaN -> "missing"."""
    if grouping == "age_bin":
        return age_bins(table["age"])
    column = table[GROUP_COLUMN.get(grouping, grouping)]
    text = column.astype(str).str.strip()
    return np.where(column.isna() | (text == ""), MISSING, text).astype(object)


def _unique(by: Iterable[str]) -> list[str]:
    by = list(dict.fromkeys(by))
    unknown = [g for g in by if g not in GROUP_COLUMN]
    if unknown:
        raise CrossdermError(f"unknown grouping {unknown[0]!r} (expected one of {', '.join(GROUPINGS)})")
    return by


def available_groupings(table: pd.DataFrame, by: Iterable[str]) -> list[str]:
    """The groupings of ``by`` (duplicates dropped) whose column the table has, in the order given."""
    return [g for g in _unique(by) if GROUP_COLUMN[g] in table.columns]


def check_group_columns(table: pd.DataFrame, by: Iterable[str], where: object) -> None:
    """An explicitly asked grouping without its column is an error naming the file (``where``)."""
    for grouping in _unique(by):
        if GROUP_COLUMN[grouping] not in table.columns:
            raise CrossdermError(f"{where}: --by {grouping} needs a {GROUP_COLUMN[grouping]!r} column, which it lacks")


def _sort_key(grouping: str) -> Any:
    """Values in reading order: age bins youngest first, others alphabetical; "missing" last."""
    if grouping == "age_bin":
        return lambda v: (v == MISSING, AGE_BINS.index(v) if v in AGE_BINS else len(AGE_BINS))
    return lambda v: (v == MISSING, v)


def evaluate_rows(rows: pd.DataFrame, n_resamples: int, rng: np.random.Generator, auc_ci: bool) -> SourceEvaluation:
    """One cell's evaluation, rows sorted by image_id first (row order never matters)."""
    rows = rows.sort_values("image_id", kind="stable")
    return evaluate_source(
        label_indices(rows["label"]), rows[list(CLASSES)].to_numpy(), CLASSES, n_resamples, rng, auc_ci=auc_ci
    )


def _cell(
    head: dict[str, Any], rows: pd.DataFrame, n_resamples: int, rng_name: str, seed: int
) -> tuple[dict[str, Any], SourceEvaluation | None]:
    """``head`` + the summary, or + ``too_few`` below MIN_GROUP_IMAGES images."""
    head = {**head, "n": len(rows)}
    if len(rows) < MIN_GROUP_IMAGES:
        return {**head, "too_few": True}, None
    evaluation = evaluate_rows(rows, n_resamples, source_rng(seed, rng_name), GROUP_AUC_CI)
    return {**head, **{k: v for k, v in evaluation.summary.items() if k != "n"}}, evaluation


def group_cells(
    table: pd.DataFrame, grouping: str, n_resamples: int, seed: int
) -> tuple[dict[str, dict[str, Any]], dict[str, SourceEvaluation]]:
    """Every ``"<source>/<value>"`` cell of ``grouping`` (sources in order of appearance, values in reading
    order), and the evaluations of those with enough images."""
    values = group_values(table, grouping)
    prefix = "" if grouping == "site" else f"{grouping}:"
    cells: dict[str, dict[str, Any]] = {}
    evaluations: dict[str, SourceEvaluation] = {}
    for source in pd.unique(table["source"]):
        in_source = (table["source"] == source).to_numpy()
        for value in sorted(set(values[in_source]), key=_sort_key(grouping)):
            key = f"{source}/{value}"
            rows = table[in_source & (values == value)]
            head = {"source": str(source), grouping: value}
            cells[key], evaluation = _cell(head, rows, n_resamples, prefix + key, seed)
            if evaluation is not None:
                evaluations[key] = evaluation
    return cells, evaluations


def summarise_sites(
    cells: dict[str, dict[str, Any]], evaluations: dict[str, SourceEvaluation]
) -> dict[str, Any] | None:
    """Mean and worst site macro-F1 over the sites with enough images (None with fewer than two).

    * ``mean_macro_f1``: the unweighted mean over sites; its CI from the per-site bootstrap draws averaged
      resample by resample (sites are resampled independently, each from its own generator).
    * ``worst_site``: the site with the lowest *point* macro-F1 (ties: first key alphabetically) and that site's
      own CI. It answers "how good is the model on its weakest site?" but ignores that another site might be the
      weakest in another sample.
    * ``min_macro_f1``: the same point value (the minimum over sites), its CI from the per-resample minimum over
      all sites. It accounts for which site is weakest varying between resamples, so it is the interval to quote
      for "the worst-site macro-F1" as a statistic; being a minimum of noisy estimates it sits lower and is wider.
    """
    keys = sorted(evaluations)
    if len(keys) < 2:
        return None
    points = np.array([evaluations[k].points["macro_f1"] for k in keys])
    draws = np.stack([evaluations[k].resamples["macro_f1"] for k in keys], axis=1)
    worst = min(keys, key=lambda k: (evaluations[k].points["macro_f1"], k))
    return {
        "sites": keys,
        "too_few": sorted(k for k, cell in cells.items() if cell.get("too_few")),
        "mean_macro_f1": interval(float(points.mean()), draws.mean(axis=1)),
        "worst_site": {"site": worst, "macro_f1": cells[worst]["macro_f1"]},
        "min_macro_f1": interval(float(points.min()), draws.min(axis=1)),
    }


def group_metrics(table: pd.DataFrame, n_resamples: int, seed: int, by: Sequence[str] = ("site",)) -> dict[str, Any]:
    """metrics.json's group sections for ``by``; groupings whose column the table lacks are skipped.

    ``sites`` + ``site_summary`` (when "site" is asked and there is a site column), ``subgroups`` (one entry per
    other grouping), and ``groups`` (the setup: groupings computed, min_images, age_bins, auc_ci); {} if none.
    """
    groupings = available_groupings(table, by)
    out: dict[str, Any] = {}
    if "site" in groupings:
        cells, evaluations = group_cells(table, "site", n_resamples, seed)
        out["sites"] = cells
        out["site_summary"] = summarise_sites(cells, evaluations)
    subgroups = {g: group_cells(table, g, n_resamples, seed)[0] for g in groupings if g != "site"}
    if subgroups:
        out["subgroups"] = subgroups
    if groupings:
        out["groups"] = {
            "by": groupings,
            "min_images": MIN_GROUP_IMAGES,
            "age_bins": [*AGE_BINS, MISSING],
            "auc_ci": GROUP_AUC_CI,
        }
    return out


def site_matrix(table: pd.DataFrame, n_resamples: int, seed: int) -> dict[str, dict[str, dict[str, Any]]]:
    """``{"<train site>": {"<test site>": cell}}`` from predictions with a ``train_site`` column.

    Each image is predicted once per training site (``train_site``, the training site's key
    ``"<source>/<site>"``, used as written); the test site is the image's ``"<source>/<site>"``. A cell is the
    summary of those predictions (plus ``train_site``, ``source``, ``site``, ``n``) or too few, as in
    :func:`group_metrics`; both levels sorted by key. A diagonal cell (a site's own images, e.g. out-of-fold) is
    shown like any other.
    """
    missing = [c for c in ("site", "train_site") if c not in table.columns]
    if missing:
        raise CrossdermError(f"the site matrix needs column(s) {', '.join(missing)}")
    train = group_values(table, "train_site")
    sites = group_values(table, "site")
    test = table["source"].astype(str).to_numpy(dtype=object) + "/" + sites
    matrix: dict[str, dict[str, dict[str, Any]]] = {}
    for train_key in sorted(set(train)):
        row: dict[str, dict[str, Any]] = {}
        for test_key in sorted(set(test[train == train_key])):
            chosen = (train == train_key) & (test == test_key)
            rows = table[chosen]
            head = {"train_site": train_key, "source": str(rows["source"].iat[0]), "site": sites[chosen][0]}
            row[test_key] = _cell(head, rows, n_resamples, f"{train_key} -> {test_key}", seed)[0]
        matrix[train_key] = row
    return matrix


# ---- metrics.md ----------------------------------------------------------------------------------------------

def format_entry(entry: dict[str, Any] | None) -> str:
    """``value [low, high]`` to 4 decimals, as the rest of metrics.md; "n/a" where undefined."""
    if entry is None or entry.get("value") is None:
        return "n/a"
    if entry.get("ci_low") is None or entry.get("ci_high") is None:
        return f"{entry['value']:.4f}"
    return f"{entry['value']:.4f} [{entry['ci_low']:.4f}, {entry['ci_high']:.4f}]"


def too_few_text(cell: dict[str, Any]) -> str:
    return f"too few (n = {cell['n']})"


def _cells_table(cells: dict[str, dict[str, Any]], label: str) -> list[str]:
    lines = [f"| {label} | n | " + " | ".join(HEADLINE_METRICS.values()) + " |", "|:--|--:|" + ":--|" * 3]
    for key, cell in cells.items():
        if cell.get("too_few"):
            values = [too_few_text(cell), *["too few"] * (len(HEADLINE_METRICS) - 1)]
        else:
            values = [format_entry(cell.get(m)) for m in HEADLINE_METRICS]
        lines.append(f"| {key} | {cell['n']} | " + " | ".join(values) + " |")
    return lines


def render_group_markdown(metrics: dict[str, Any]) -> list[str]:
    """metrics.md's per-site table (with mean / worst / minimum rows), subgroup tables and site matrix."""
    lines: list[str] = []
    setup = metrics.get("groups")
    if setup:
        rule = (
            f"Cells with fewer than {setup['min_images']} images are shown as too few, without values; blank values "
            f"form the group \"{MISSING}\". AUC of a cell: point value only (see metrics.json)."
        )
        if "sites" in metrics:
            lines += ["", "## Per site", "", rule, "", *_cells_table(metrics["sites"], "site")]
            summary = metrics.get("site_summary")
            if summary:
                empty = " | ".join([""] * (len(HEADLINE_METRICS) - 1))
                worst = summary["worst_site"]
                lines += [
                    f"| mean over {len(summary['sites'])} sites | | "
                    f"{format_entry(summary['mean_macro_f1'])} | {empty} |",
                    f"| worst site: {worst['site']} | {metrics['sites'][worst['site']]['n']} | "
                    f"{format_entry(worst['macro_f1'])} | {empty} |",
                    f"| minimum over sites (per resample) | | {format_entry(summary['min_macro_f1'])} | {empty} |",
                ]
            else:
                lines += ["", "Fewer than two sites with enough images: no mean or worst site."]
        for grouping, cells in metrics.get("subgroups", {}).items():
            lines += ["", f"## Subgroups by {grouping}", "", rule, "", *_cells_table(cells, f"source/{grouping}")]
    if metrics.get("site_matrix"):
        lines += render_site_matrix_markdown(metrics["site_matrix"])
    return lines


def site_matrix_cell(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "-"
    return too_few_text(cell) if cell.get("too_few") else format_entry(cell.get("macro_f1"))


def render_site_matrix_markdown(matrix: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The site matrix as one Markdown table of macro-F1 [CI]; "-" = not predicted."""
    tests = sorted({test for row in matrix.values() for test in row})
    lines = ["", "## Site matrix: macro-F1 (rows = training site, columns = test site)", ""]
    lines += ["| train \\ test | " + " | ".join(tests) + " |", "|:--|" + ":--|" * len(tests)]
    lines += [
        f"| {train} | " + " | ".join(site_matrix_cell(row.get(test)) for test in tests) + " |"
        for train, row in matrix.items()
    ]
    return lines
