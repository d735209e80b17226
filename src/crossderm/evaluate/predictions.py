"""Predictions CSV -> validated table -> metrics.json / metrics.md (used by ``evaluate``, ``pool`` and ``report``).

numpy/pandas are imported inside the functions so ``crossderm --help`` stays instant.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossderm.defaults import BOOTSTRAP_SEED, N_BOOTSTRAP, REFERENCE_SOURCE
from crossderm.errors import CrossdermError, at
from crossderm.labels import CLASSES
from crossderm.runfolder import METRICS_JSON, METRICS_MD

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

ID_COLUMNS = ("image_id", "source", "label")
# Kept when present, never required (crossderm.evaluate.groups): text stripped, age a number (blank = NaN).
# train_site marks a site-matrix table, where an image appears once per training site.
OPTIONAL_COLUMNS = ("site", "sex", "age", "anatom_site", "train_site")
SUM_TOLERANCE = 1e-3


def evaluate_file(
    predictions: Path,
    out: Path,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
    reference_source: str = REFERENCE_SOURCE,
    by: Sequence[str] | None = None,
    site_matrix_predictions: Path | None = None,
    ood: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], str]:
    """Validate ``predictions``, evaluate it and write ``out/metrics.json`` + ``out/metrics.md``.

    ``by``: the groupings (crossderm.defaults.GROUPINGS); None = per site when there is a site column. A grouping
    asked for explicitly whose column the file lacks is an error. ``site_matrix_predictions`` (one row per
    training site and image) adds the ``site_matrix`` section; ``ood`` (crossderm.evaluate.ood) the ``ood``
    section.
    """
    from crossderm.evaluate.groups import check_group_columns, site_matrix
    from crossderm.fsutil import atomic_write_json, atomic_write_text, check_writable_folder

    check_writable_folder(out, "--out")

    table = load_predictions(predictions)
    if by is None:
        by = ("site",)
    else:
        check_group_columns(table, by, predictions)
    metrics = compute_metrics(table, n_resamples, seed, reference_source, by)
    if site_matrix_predictions is not None:
        metrics["site_matrix"] = site_matrix(load_predictions(site_matrix_predictions), n_resamples, seed)
    if ood:
        metrics["ood"] = ood
    markdown = render_markdown(metrics, predictions)
    atomic_write_json(out / METRICS_JSON, metrics)
    atomic_write_text(out / METRICS_MD, markdown)
    return metrics, markdown


def load_predictions(path: Path) -> pd.DataFrame:
    """Read and validate PRED.csv; every problem is a one-line error naming the file and line."""
    import numpy as np
    import pandas as pd

    from crossderm.csvtable import read_table

    raw, _ = read_table(path, "predictions CSV", strip=False, skip_blank=False)  # a blank line is a blank row
    missing = [c for c in (*ID_COLUMNS, *CLASSES) if c not in raw.columns]
    if missing:
        raise CrossdermError(
            f"{at(path)}: missing column(s) {', '.join(missing)} "
            f"(need {', '.join(ID_COLUMNS)} and one probability column per class: {', '.join(CLASSES)})"
        )
    if raw.empty:
        raise CrossdermError(f"{at(path)}: no prediction rows")

    def line(i: int) -> int:
        return int(raw.index[i])  # read_table indexes each row by its line in the file

    def fail_first(mask: np.ndarray | pd.Series, message: Callable[[int], str]) -> None:
        rows = np.flatnonzero(np.asarray(mask))
        if rows.size:
            raise CrossdermError(f"{at(path, line(int(rows[0])))}: {message(int(rows[0]))}")

    for column in ("image_id", "source"):
        fail_first(raw[column].str.strip() == "", lambda i, column=column: f"blank {column}")
    fail_first(
        ~raw["label"].isin(CLASSES),
        lambda i: f"unknown label {raw['label'].iat[i]!r} (expected one of {', '.join(CLASSES)})",
    )
    text = raw[list(CLASSES)]
    probs = text.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad_cells = ~np.isfinite(probs)
    fail_first(
        bad_cells.any(axis=1),
        lambda i: (
            f"probability {CLASSES[bad_cells[i].argmax()]} is not a finite number "
            f"({text.iat[i, bad_cells[i].argmax()]!r})"
        ),
    )
    fail_first(
        (probs < 0).any(axis=1),
        lambda i: f"probability {CLASSES[probs[i].argmin()]} is negative ({probs[i].min():g})",
    )
    totals = probs.sum(axis=1)
    fail_first(
        np.abs(totals - 1) > SUM_TOLERANCE,
        lambda i: f"probabilities sum to {totals[i]:.6g}, not 1 (tolerance {SUM_TOLERANCE:g})",
    )

    def duplicate(i: int) -> str:
        image_id, source = raw["image_id"].iat[i], raw["source"].iat[i]
        first = np.flatnonzero((raw["image_id"] == image_id) & (raw["source"] == source))[0]
        return f"image_id {image_id!r} in source {source!r} duplicates line {line(first)}"

    optional = [c for c in OPTIONAL_COLUMNS if c in raw.columns]
    if "train_site" in optional:  # a site-matrix table: each image once per training site

        def duplicate_in_train_site(i: int) -> str:
            same = (raw["image_id"] == raw["image_id"].iat[i]) & (raw["source"] == raw["source"].iat[i])
            first = np.flatnonzero(same & (raw["train_site"] == raw["train_site"].iat[i]))[0]
            return (
                f"image_id {raw['image_id'].iat[i]!r} in source {raw['source'].iat[i]!r} duplicates line "
                f"{line(first)} for train_site {raw['train_site'].iat[i]!r}"
            )

        fail_first(raw.duplicated(["train_site", "source", "image_id"]), duplicate_in_train_site)
    else:
        fail_first(raw.duplicated(["source", "image_id"]), duplicate)
    table = raw[list(ID_COLUMNS)].copy()
    table[list(CLASSES)] = probs
    for column in optional:
        table[column] = raw[column].str.strip()
    if "age" in optional:
        blank = table["age"].str.lower().isin(["", "nan"])
        ages = pd.to_numeric(table["age"].where(~blank), errors="coerce").to_numpy(dtype=np.float64)
        fail_first(
            ~blank & ~(np.isfinite(ages) & (ages >= 0)),
            lambda i: f"age {raw['age'].iat[i]!r} is not a non-negative number (blank = missing)",
        )
        table["age"] = ages
    return table.reset_index(drop=True)


def source_rng(seed: int, source: str) -> np.random.Generator:
    """The bootstrap generator of one source, seeded with (seed, CRC32 of its name): a source's CIs depend
    only on its own rows, and the paired comparisons of the report redraw exactly the same resamples."""
    import zlib

    import numpy as np

    return np.random.default_rng([seed, zlib.crc32(str(source).encode())])


def compute_metrics(
    table: pd.DataFrame,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
    reference_source: str = REFERENCE_SOURCE,
    by: Sequence[str] = ("site",),
) -> dict[str, Any]:
    """metrics.json content: ``sources`` (one section each, in order of appearance), ``gaps`` (the reference
    source minus each other source, when the reference is present) and the bootstrap setup; then for the
    groupings of ``by`` whose column the table has, ``sites`` / ``site_summary`` / ``subgroups`` / ``groups``
    (:func:`crossderm.evaluate.groups.group_metrics`; the sections above never depend on ``by``).

    Each source's rows are sorted by image_id before resampling, so results do not depend on row order.
    """
    from crossderm.defaults import CI_LEVEL
    from crossderm.evaluate.groups import group_metrics
    from crossderm.evaluate.metrics import evaluate_source, gap_name, generalisation_gap
    from crossderm.labels import label_indices

    evaluations = {}
    for source, rows in table.groupby("source", sort=False):
        rows = rows.sort_values("image_id", kind="stable")
        evaluations[str(source)] = evaluate_source(
            label_indices(rows["label"]), rows[list(CLASSES)].to_numpy(), CLASSES, n_resamples,
            source_rng(seed, str(source)),
        )
    gaps = {}
    if reference_source in evaluations:
        for other, evaluation in evaluations.items():
            if other != reference_source:
                entry = generalisation_gap(evaluations[reference_source], evaluation)
                gaps[gap_name(reference_source, other)] = {"reference": reference_source, "other": other, **entry}
    return {
        "sources": {source: evaluation.summary for source, evaluation in evaluations.items()},
        "reference_source": reference_source,
        "gaps": gaps,
        "bootstrap": {"n_resamples": n_resamples, "seed": seed, "ci": CI_LEVEL, "method": "percentile"},
        **group_metrics(table, n_resamples, seed, by),
    }


def _cell(entry: dict[str, float | None] | None) -> str:
    """``value [low, high]`` to 4 decimals; "n/a" where undefined."""
    if entry is None or entry["value"] is None:
        return "n/a"
    if entry["ci_low"] is None or entry["ci_high"] is None:
        return f"{entry['value']:.4f}"
    return f"{entry['value']:.4f} [{entry['ci_low']:.4f}, {entry['ci_high']:.4f}]"


def render_markdown(metrics: dict[str, Any], predictions: Path) -> str:
    """Readable summary of metrics.json: headline table, per-class table and confusion matrix per source, the
    gaps, then the per-site, subgroup and site-matrix tables where metrics.json has them."""
    from crossderm.evaluate.groups import render_group_markdown
    from crossderm.evaluate.metrics import HEADLINE_METRICS

    setup = metrics["bootstrap"]
    lines = [
        f"# Evaluation of {predictions}",
        "",
        f"Value [{setup['ci']:.0%} CI]: {setup['method']} bootstrap over images, "
        f"{setup['n_resamples']} resamples, seed {setup['seed']}.",
    ]
    headline = [(label, key) for key, label in HEADLINE_METRICS.items()] + [("macro AUC", "macro_auc")]
    for source, summary in metrics["sources"].items():
        lines += ["", f"## {source} (n = {summary['n']})", "", "| metric | value [95% CI] |", "|:--|:--|"]
        lines += [f"| {label} | {_cell(summary[key])} |" for label, key in headline]
        lines += ["", "| class | support | F1 | precision | recall | AUC |", "|:--|--:|:--|:--|:--|:--|"]
        for name, entry in summary["per_class"].items():
            if entry is None:
                lines.append(f"| {name} | 0 | n/a | n/a | n/a | n/a |")
            else:
                cells = " | ".join(_cell(entry[m]) for m in ("f1", "precision", "recall", "auc"))
                lines.append(f"| {name} | {entry['support']} | {cells} |")
        lines += ["", "Confusion matrix (rows = true, columns = predicted):", ""]
        lines += ["| true \\ pred | " + " | ".join(CLASSES) + " |", "|:--|" + "--:|" * len(CLASSES)]
        lines += [
            f"| {name} | " + " | ".join(str(v) for v in row) + " |"
            for name, row in zip(CLASSES, summary["confusion_matrix"], strict=True)
        ]
    for name, gap in metrics["gaps"].items():
        lines += ["", f"## Generalisation gap ({name})", "", "| metric | value [95% CI] |", "|:--|:--|"]
        lines += [f"| {label} | {_cell(gap[key])} |" for key, label in HEADLINE_METRICS.items()]
    if not metrics["gaps"]:
        lines += ["", f"No generalisation gap: the reference source {metrics['reference_source']!r} is not in "
                  "the predictions, or it is the only source."]
    lines += render_group_markdown(metrics)
    if metrics.get("ood"):
        from crossderm.evaluate.ood import render_ood

        lines += render_ood(metrics["ood"])
    return "\n".join(lines) + "\n"
