"""Predictions CSV -> validated table -> metrics.json / metrics.md (used by ``evaluate``, ``pool`` and ``report``).

numpy/pandas are imported inside the functions so ``crossderm --help`` stays instant.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossderm.errors import CrossdermError, at
from crossderm.labels import CLASSES

if TYPE_CHECKING:
    import pandas as pd

ID_COLUMNS = ("image_id", "source", "label")
RESERVED_SOURCES = ("gap", "bootstrap")
SUM_TOLERANCE = 1e-3
GAP = ("ham", "isic")


def evaluate_file(predictions: Path, out: Path, n_resamples: int, seed: int) -> tuple[dict[str, Any], str]:
    """Validate ``predictions``, evaluate it and write ``out/metrics.json`` + ``out/metrics.md``."""
    from crossderm.fsutil import atomic_write_json, atomic_write_text

    metrics = compute_metrics(load_predictions(predictions), n_resamples, seed)
    markdown = render_markdown(metrics, predictions)
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_text(out / "metrics.md", markdown)
    return metrics, markdown


def load_predictions(path: Path) -> pd.DataFrame:
    """Read and validate PRED.csv; every problem is a one-line error naming the file and line."""
    import numpy as np
    import pandas as pd

    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except FileNotFoundError:
        raise CrossdermError(f"{at(path)}: no such file") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CrossdermError(
            f"{at(path)}: cannot read predictions CSV ({' '.join(str(exc).split())})"
        ) from None
    missing = [c for c in (*ID_COLUMNS, *CLASSES) if c not in raw.columns]
    if missing:
        raise CrossdermError(
            f"{at(path)}: missing column(s) {', '.join(missing)} "
            f"(need {', '.join(ID_COLUMNS)} and one probability column per class: {', '.join(CLASSES)})"
        )
    if raw.empty:
        raise CrossdermError(f"{at(path)}: no prediction rows")

    def fail_first(mask: np.ndarray | pd.Series, message: Callable[[int], str]) -> None:
        rows = np.flatnonzero(np.asarray(mask))
        if rows.size:
            raise CrossdermError(f"{at(path, int(rows[0]) + 2)}: {message(int(rows[0]))}")

    for column in ("image_id", "source"):
        fail_first(raw[column].str.strip() == "", lambda i, column=column: f"blank {column}")
    fail_first(
        raw["source"].isin(RESERVED_SOURCES),
        lambda i: f"source {raw['source'].iat[i]!r} is reserved (it names a section of metrics.json)",
    )
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
        return f"image_id {image_id!r} in source {source!r} duplicates line {first + 2}"

    fail_first(raw.duplicated(["source", "image_id"]), duplicate)
    table = raw[list(ID_COLUMNS)].copy()
    table[list(CLASSES)] = probs
    return table


def compute_metrics(table: pd.DataFrame, n_resamples: int, seed: int) -> dict[str, Any]:
    """metrics.json content: one section per source (in order of appearance), the gap, the bootstrap setup.

    Each source's rows are sorted by image_id and its generator is seeded with (seed, CRC32 of the source
    name), so its CIs depend only on its own rows, not on row order or on the other sources.
    """
    import zlib

    import numpy as np

    from crossderm.evaluate.metrics import CI_LEVEL, evaluate_source, generalisation_gap

    evaluations = {}
    for source, rows in table.groupby("source", sort=False):
        rows = rows.sort_values("image_id", kind="stable")
        rng = np.random.default_rng([seed, zlib.crc32(str(source).encode())])
        y = rows["label"].map(CLASSES.index).to_numpy()
        evaluations[str(source)] = evaluate_source(
            y, rows[list(CLASSES)].to_numpy(), CLASSES, n_resamples, rng
        )
    metrics: dict[str, Any] = {source: evaluation.summary for source, evaluation in evaluations.items()}
    if all(source in evaluations for source in GAP):
        metrics["gap"] = generalisation_gap(evaluations[GAP[0]], evaluations[GAP[1]])
    metrics["bootstrap"] = {"n_resamples": n_resamples, "seed": seed, "ci": CI_LEVEL, "method": "percentile"}
    return metrics


def _cell(entry: dict[str, float | None] | None) -> str:
    """``value [low, high]`` to 4 decimals; "n/a" where undefined."""
    if entry is None or entry["value"] is None:
        return "n/a"
    if entry["ci_low"] is None or entry["ci_high"] is None:
        return f"{entry['value']:.4f}"
    return f"{entry['value']:.4f} [{entry['ci_low']:.4f}, {entry['ci_high']:.4f}]"


def render_markdown(metrics: dict[str, Any], predictions: Path) -> str:
    """Readable summary of metrics.json: headline table, per-class table and confusion matrix per source."""
    setup = metrics["bootstrap"]
    lines = [
        f"# Evaluation of {predictions}",
        "",
        f"Value [{setup['ci']:.0%} CI]: {setup['method']} bootstrap over images, "
        f"{setup['n_resamples']} resamples, seed {setup['seed']}.",
    ]
    headline = (
        ("macro-F1", "macro_f1"),
        ("accuracy", "accuracy"),
        ("balanced accuracy", "balanced_accuracy"),
        ("macro AUC", "macro_auc"),
    )
    for source, summary in metrics.items():
        if source in RESERVED_SOURCES:
            continue
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
    if "gap" in metrics:
        lines += [
            "",
            f"## Generalisation gap ({GAP[0]} - {GAP[1]})",
            "",
            "| metric | value [95% CI] |",
            "|:--|:--|",
        ]
        lines += [
            f"| {label} | {_cell(metrics['gap'][key])} |" for label, key in headline if key in metrics["gap"]
        ]
    return "\n".join(lines) + "\n"
