"""Cross-run report: Table 1 / Table 2 of the paper, the generalisation gap and its paired reduction.

Every run is one ``crossderm cv`` folder. Its headline numbers are copied from ``metrics.json`` unchanged;
the only new statistics are the comparisons between runs (gap reduction, ISIC macro-F1 gain). Those need a
*paired* bootstrap: the runs predict the same images, so each resample must hold the same images for both
runs, otherwise the shared image difficulty inflates the CI of the difference. The outputs (HTML with
embedded PNGs, Markdown, JSON) need nothing beyond the report folder, so they read offline.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml

from crossderm.errors import CrossdermError
from crossderm.evaluate.metrics import (
    CI_LEVEL,
    bootstrap_confusions,
    confusion_matrix,
    interval,
    metrics_from_confusion,
)
from crossderm.evaluate.predictions import load_predictions
from crossderm.fsutil import atomic_directory, read_json
from crossderm.labels import CLASSES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TEST_SOURCES: tuple[str, ...] = ("ham", "isic")
SOURCE_LABELS = {"ham": "HAM-test", "isic": "ISIC-test"}
HEADLINE: tuple[tuple[str, str], ...] = (
    ("macro_f1", "macro-F1"),
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "balanced accuracy"),
)
GAP_METRICS: tuple[str, ...] = ("macro_f1", "accuracy")
DEFAULT_BOOTSTRAP = {"n_resamples": 2000, "seed": 0, "ci": CI_LEVEL}
# metrics.json must agree with oof_predictions.csv to this precision, or it is stale.
POINT_TOLERANCE = 1e-9
K = len(CLASSES)

# Rashid et al. 2026, real HAM10000 / ISIC 2019 data: shown beside ours for context only.
PAPER_LABEL = "paper, real data"
PAPER_REFERENCE: tuple[dict[str, Any], ...] = (
    {
        "name": "(a) HAM-only",
        "model": "dual-backbone fusion",
        "parameters_m": 66.1,
        "train_sources": "ham",
        "sampler": "—",
        "macro_f1": {"ham": (0.6905, None, None), "isic": (0.4301, None, None)},
        "isic_accuracy": None,
    },
    {
        "name": "(b) joint",
        "model": "ConvNeXt-Tiny",
        "parameters_m": 27.8,
        "train_sources": "ham + isic",
        "sampler": "source_balanced",
        "macro_f1": {"ham": (0.7401, 0.7252, 0.7541), "isic": (0.5976, 0.5817, 0.6128)},
        "isic_accuracy": 0.6924,
    },
)


@dataclass(frozen=True)
class Run:
    """What the report needs from one run folder."""

    run_dir: Path
    name: str
    description: str
    model: str
    parameters: int
    train_sources: list[str]
    sampler: str
    metrics: dict[str, Any]
    predictions: pd.DataFrame
    histories: dict[int, pd.DataFrame]
    calibration: dict[str, Any] | None = None


@dataclass(frozen=True)
class Table:
    """One table, rendered both to Markdown and to HTML from the same cells."""

    title: str
    header: tuple[str, ...]
    rows: list[tuple[str, ...]]
    note: str = ""
    text_columns: int = 1


@dataclass(frozen=True)
class Plot:
    """One PNG: written to ``figures/`` for the Markdown, embedded as base64 in the HTML."""

    filename: str
    caption: str
    png: bytes


def _read_json(path: Path) -> dict[str, Any]:
    return read_json(path, "is this a finished `crossderm cv` run folder?")


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CrossdermError(f"{path}: no such file (is this a `crossderm cv` run folder?)")
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CrossdermError(f"{path}: cannot read YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(config, dict):
        raise CrossdermError(f"{path}: expected a mapping of settings")
    missing = [key for key in ("name", "model", "train_sources", "sampler") if key not in config]
    if missing:
        raise CrossdermError(f"{path}: missing setting(s) {', '.join(missing)}")
    return config


def _read_histories(run_dir: Path) -> dict[int, pd.DataFrame]:
    """``fold_<k>/history.csv`` of every fold that has one, by fold number."""
    histories: dict[int, pd.DataFrame] = {}
    for path in run_dir.glob("fold_*/history.csv"):
        suffix = path.parent.name.removeprefix("fold_")
        if not suffix.isdigit():
            continue
        try:
            history = pd.read_csv(path)
        except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise CrossdermError(f"{path}: cannot read history ({' '.join(str(exc).split())})") from None
        missing = [c for c in ("epoch", "train_loss", "val_macro_f1") if c not in history.columns]
        if missing:
            raise CrossdermError(f"{path}: missing column(s) {', '.join(missing)}")
        histories[int(suffix)] = history
    return dict(sorted(histories.items()))


def load_run(run_dir: str | Path) -> Run:
    """Read one run folder; any missing or malformed file is a one-line error naming it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CrossdermError(f"{run_dir}: no such run folder")
    config = _read_config(run_dir / "config.yaml")
    info = _read_json(run_dir / "run.json")
    if not isinstance(info.get("parameters"), int):
        raise CrossdermError(f"{run_dir / 'run.json'}: 'parameters' must be an integer count")
    metrics_path = run_dir / "metrics.json"
    metrics = _read_json(metrics_path)
    for section in (*TEST_SOURCES, "gap"):
        if not isinstance(metrics.get(section), dict):
            raise CrossdermError(
                f"{metrics_path}: no {section!r} section (the report compares HAM-test with ISIC-test)"
            )
    predictions_path = run_dir / "oof_predictions.csv"
    if not predictions_path.is_file():
        raise CrossdermError(f"{predictions_path}: no such file (run `crossderm pool {run_dir}` first)")
    return Run(
        run_dir=run_dir,
        name=str(config["name"]),
        description=str(config.get("description") or ""),
        model=str(config["model"]),
        parameters=info["parameters"],
        train_sources=[str(s) for s in config["train_sources"]],
        sampler=str(config["sampler"]),
        metrics=metrics,
        predictions=load_predictions(predictions_path),
        histories=_read_histories(run_dir),
        calibration=_read_json(run_dir / "calibration.json") if (run_dir / "calibration.json").is_file() else None,
    )


def load_runs(run_dirs: Sequence[str | Path]) -> list[Run]:
    """Load every run; two runs of the same experiment name would make the tables ambiguous."""
    runs = [load_run(d) for d in run_dirs]
    seen: dict[str, Path] = {}
    for run in runs:
        if run.name in seen:
            raise CrossdermError(f"{run.run_dir}: experiment name {run.name!r} is also the name of {seen[run.name]}")
        seen[run.name] = run.run_dir
    return runs


def bootstrap_setup(metrics: dict[str, Any]) -> dict[str, Any]:
    """Resamples, seed and CI level of metrics.json's ``bootstrap`` entry (2000, 0, 0.95 if absent)."""
    entry = metrics.get("bootstrap") or {}
    return {key: entry.get(key, default) for key, default in DEFAULT_BOOTSTRAP.items()}


def _paired_labels(reference: Run, other: Run, source: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """Ground truth and both runs' argmax predictions on the same images, sorted by image_id."""
    columns = ["image_id", "label", *CLASSES]
    ref = reference.predictions.loc[reference.predictions["source"] == source, columns]
    oth = other.predictions.loc[other.predictions["source"] == source, columns]
    only_ref = sorted(set(ref["image_id"]) - set(oth["image_id"]))
    only_oth = sorted(set(oth["image_id"]) - set(ref["image_id"]))
    if only_ref or only_oth:
        example = (only_ref or only_oth)[0]
        raise CrossdermError(
            f"{reference.run_dir} and {other.run_dir} predict different {source} images "
            f"({len(only_ref)} only in the first, {len(only_oth)} only in the second, e.g. {example!r}); "
            "the paired comparison needs the same images in both runs"
        )
    joint = ref.merge(oth, on="image_id", suffixes=("_ref", "_oth")).sort_values("image_id", kind="stable")
    differ = joint["label_ref"] != joint["label_oth"]
    if differ.any():
        raise CrossdermError(
            f"{reference.run_dir} and {other.run_dir} disagree on the label of {source} image "
            f"{joint.loc[differ.idxmax(), 'image_id']!r}"
        )
    y = joint["label_ref"].map(CLASSES.index).to_numpy(dtype=np.int64)
    preds = [joint[[f"{c}{suffix}" for c in CLASSES]].to_numpy().argmax(axis=1) for suffix in ("_ref", "_oth")]
    return y, preds


def _check_fresh(run: Run, source: str, n: int, point: dict[str, np.ndarray], e: int) -> None:
    """The recomputed point values must be metrics.json's, else it is stale against the predictions."""
    section = run.metrics[source]
    stale = section.get("n") != n or any(
        (section.get(m) or {}).get("value") is None or abs(section[m]["value"] - float(point[m][e])) > POINT_TOLERANCE
        for m in GAP_METRICS
    )
    if stale:
        raise CrossdermError(
            f"{run.run_dir / 'metrics.json'}: {source} metrics do not match oof_predictions.csv "
            f"(stale? rerun `crossderm pool {run.run_dir}`)"
        )


def paired_comparison(reference: Run, other: Run, setup: dict[str, Any]) -> dict[str, Any]:
    """Gap reduction (gap_ref - gap_other) and ISIC macro-F1 gain (other - ref) with paired bootstrap CIs.

    Per source, one multinomial over the joint (true, pred_ref, pred_other) cells resamples the same images
    for both runs; the sources are resampled independently (generator seeded with (seed, CRC32(source)),
    as ``crossderm evaluate`` does), so per resample gap = ham - isic for each run. ``relative`` is the
    reduction in % of the reference gap (None if that gap is 0).
    """
    points: dict[str, dict[str, np.ndarray]] = {}
    draws: dict[str, dict[str, np.ndarray]] = {}
    for source in TEST_SOURCES:
        y, preds = _paired_labels(reference, other, source)
        present = np.bincount(y, minlength=K) > 0
        points[source] = metrics_from_confusion(np.stack([confusion_matrix(y, p, K) for p in preds]), present)
        for e, run in enumerate((reference, other)):
            _check_fresh(run, source, int(y.size), points[source], e)
        rng = np.random.default_rng([setup["seed"], zlib.crc32(source.encode())])
        draws[source] = metrics_from_confusion(bootstrap_confusions(y, preds, K, setup["n_resamples"], rng), present)
    result: dict[str, Any] = {}
    for metric in GAP_METRICS:
        gap_point = points["ham"][metric] - points["isic"][metric]
        gap_draws = draws["ham"][metric] - draws["isic"][metric]
        reduction = float(gap_point[0] - gap_point[1])
        entry: dict[str, Any] = interval(reduction, gap_draws[:, 0] - gap_draws[:, 1], setup["ci"])
        entry["relative"] = 100 * reduction / float(gap_point[0]) if gap_point[0] != 0 else None
        result[metric] = entry
    isic_point, isic_draws = points["isic"]["macro_f1"], draws["isic"]["macro_f1"]
    result["isic_macro_f1_gain"] = interval(
        float(isic_point[1] - isic_point[0]), isic_draws[:, 1] - isic_draws[:, 0], setup["ci"]
    )
    return result


def build_summary(runs: list[Run], setup: dict[str, Any]) -> dict[str, Any]:
    """summary.json: each run's headline numbers from metrics.json, then every run against the first."""
    experiments = {
        run.name: {
            "run_dir": str(run.run_dir),
            "model": run.model,
            "parameters": run.parameters,
            "train_sources": run.train_sources,
            "sampler": run.sampler,
            "test": {s: {m: run.metrics[s].get(m) for m, _ in HEADLINE} for s in TEST_SOURCES},
            "gap": {m: run.metrics["gap"].get(m) for m in GAP_METRICS},
        }
        for run in runs
    }
    reference = runs[0]
    return {
        "experiments": experiments,
        "reference": reference.name,
        "bootstrap": {**setup, "method": "paired percentile"},
        "gap_reduction": {
            f"{other.name} vs {reference.name}": paired_comparison(reference, other, setup) for other in runs[1:]
        },
    }


def _value(entry: dict[str, Any] | None, percent: bool = False, signed: bool = False) -> str:
    """``value [low, high]``: 4 decimals, or % with 2 decimals; "n/a" where undefined."""
    if entry is None or entry.get("value") is None:
        return "n/a"
    scale, spec = (100.0, ".2f") if percent else (1.0, ".4f")
    spec = ("+" if signed else "") + spec
    text = format(entry["value"] * scale, spec)
    if entry.get("ci_low") is not None and entry.get("ci_high") is not None:
        text += f" [{entry['ci_low'] * scale:{spec}}, {entry['ci_high'] * scale:{spec}}]"
    return text + (" %" if percent and not signed else " pp" if percent else "")


def _paper_entry(triple: tuple[float, float | None, float | None]) -> dict[str, float | None]:
    return dict(zip(("value", "ci_low", "ci_high"), triple, strict=True))


def _paper_cell(paper: dict[str, Any], source: str, metric: str) -> str:
    """Table 1 cell of a paper row: macro-F1 for both sources, accuracy only where published."""
    if metric == "macro_f1":
        return _value(_paper_entry(paper["macro_f1"][source]))
    if metric == "accuracy" and source == "isic":
        return _value({"value": paper["isic_accuracy"]}, percent=True)
    return "n/a"


def _paper_gap(paper: dict[str, Any]) -> float:
    return paper["macro_f1"]["ham"][0] - paper["macro_f1"]["isic"][0]


def build_tables(runs: list[Run], summary: dict[str, Any]) -> list[Table]:
    """Table 1, the gap, the gap reduction and Table 2 (per-class F1), ours then the paper's for context."""
    paper = f"{PAPER_LABEL}: "
    header1 = ("experiment", "model", "params (M)", "train sources", "sampler") + tuple(
        f"{SOURCE_LABELS[s]} {label}" for s in TEST_SOURCES for _, label in HEADLINE
    )
    rows1 = [
        (run.name, run.model, f"{run.parameters / 1e6:.3g}", " + ".join(run.train_sources), run.sampler)
        + tuple(_value(run.metrics[s].get(m), percent=m != "macro_f1") for s in TEST_SOURCES for m, _ in HEADLINE)
        for run in runs
    ]
    rows1 += [
        (paper + ref["name"], ref["model"], f"{ref['parameters_m']}", ref["train_sources"], ref["sampler"])
        + tuple(_paper_cell(ref, s, m) for s in TEST_SOURCES for m, _ in HEADLINE)
        for ref in PAPER_REFERENCE
    ]
    setup = summary["bootstrap"]
    ci = f"{setup['ci']:.0%} percentile-bootstrap CI over images"
    table1 = Table(
        "Table 1: headline metrics",
        header1,
        rows1,
        f"Value [{ci}] from each run's metrics.json. Rows marked '{PAPER_LABEL}' are the published numbers "
        "(Rashid et al. 2026) on the real datasets, for context only; n/a = not reported.",
        text_columns=5,
    )
    gap_rows = [
        (run.name, *(_value(run.metrics["gap"].get(m), percent=m == "accuracy", signed=True) for m in GAP_METRICS))
        for run in runs
    ]
    gap_rows += [(paper + ref["name"], f"{_paper_gap(ref):+.4f}", "n/a") for ref in PAPER_REFERENCE]
    gap_table = Table(
        "Generalisation gap (HAM-test - ISIC-test)",
        ("experiment", "macro-F1 gap", "accuracy gap"),
        gap_rows,
        f"Value [{ci}, the two test sets resampled independently]; accuracy in percentage points (pp).",
    )
    reduction_rows = []
    for key, comparison in summary["gap_reduction"].items():
        cells = []
        for m in GAP_METRICS:
            relative = comparison[m]["relative"]
            cells += [
                _value(comparison[m], percent=m == "accuracy", signed=True),
                "n/a" if relative is None else f"{relative:+.1f} %",
            ]
        reduction_rows.append((key, *cells, _value(comparison["isic_macro_f1_gain"], signed=True)))
    (a, b) = PAPER_REFERENCE
    reduction = _paper_gap(a) - _paper_gap(b)
    gain = b["macro_f1"]["isic"][0] - a["macro_f1"]["isic"][0]
    reduction_rows.append(
        (
            f"{paper}(b) vs (a)",
            f"{reduction:+.4f}",
            f"{100 * reduction / _paper_gap(a):+.1f} %",
            "n/a",
            "n/a",
            f"{gain:+.4f}",
        )
    )
    reduction_table = Table(
        f"Gap reduction against the reference run {summary['reference']!r} (reference gap - other gap)",
        (
            "comparison",
            "macro-F1 gap reduction",
            "relative",
            "accuracy gap reduction",
            "relative",
            "ISIC macro-F1 gain (other - reference)",
        ),
        reduction_rows,
        f"Value [{setup['ci']:.0%} CI from a paired bootstrap: {setup['n_resamples']} resamples, seed "
        f"{setup['seed']}; each resample holds the same images for both runs]. Relative = % of the reference "
        "gap. The paper row is derived from the published point values (no CI).",
    )
    header2 = ("class",) + tuple(f"{run.name} {SOURCE_LABELS[s]}" for run in runs for s in TEST_SOURCES)
    rows2 = [
        (name, *(_value((run.metrics[s].get("per_class_f1") or {}).get(name)) for run in runs for s in TEST_SOURCES))
        for name in CLASSES
    ]
    table2 = Table(
        "Table 2: per-class F1",
        header2,
        rows2,
        f"F1 [{ci}]; n/a = class absent from that test set.",
    )
    tables = [table1, gap_table, reduction_table, table2]
    calibrated = [run for run in runs if run.calibration]
    if calibrated:
        rows = [
            (
                run.name,
                SOURCE_LABELS.get(source, source),
                f"{info['ece_before']:.4f}",
                f"{info['ece_after']:.4f}",
                ", ".join(f"{t:.2f}" for t in run.calibration["temperature"].values()),
            )
            for run in calibrated
            for source, info in run.calibration["sources"].items()
        ]
        tables.append(
            Table(
                "Calibration: expected calibration error of the out-of-fold predictions",
                ("experiment", "test set", "ECE before", "ECE after", "temperature per fold"),
                rows,
                f"Top-label ECE, {calibrated[0].calibration['n_bins']} equal-width bins. Temperature scaling of the "
                "log-probabilities, fitted per fold on its inner validation split only (never on test images).",
                text_columns=2,
            )
        )
    return tables


def _png(fig: Figure) -> bytes:
    """PNG bytes without the software/date metadata, so equal plots give equal files."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    return buffer.getvalue()


def _slug(index: int, name: str) -> str:
    """File-name-safe and unique even when two names clean up to the same text."""
    return f"{index:02d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', name).strip('_.') or 'run'}"


def plot_confusions(run: Run, filename: str) -> Plot:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.6), layout="constrained")
    axes = fig.subplots(1, len(TEST_SOURCES))
    for ax, source in zip(axes, TEST_SOURCES, strict=True):
        cm = np.asarray(run.metrics[source]["confusion_matrix"], dtype=np.float64)
        support = cm.sum(axis=1, keepdims=True)
        rates = np.divide(cm, support, out=np.zeros_like(cm), where=support > 0)
        image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        for i in range(K):
            for j in range(K):
                ax.text(
                    j,
                    i,
                    f"{rates[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black",
                )
        ax.set_xticks(range(K), CLASSES, rotation=45)
        ax.set_yticks(range(K), CLASSES)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{SOURCE_LABELS[source]} (n = {int(cm.sum())})")
    fig.colorbar(image, ax=axes, shrink=0.8, label="fraction of the true class")
    fig.suptitle(run.name)
    return Plot(filename, f"Row-normalised confusion matrices of {run.name}.", _png(fig))


def plot_per_class_f1(runs: list[Run]) -> Plot:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, len(TEST_SOURCES), sharey=True)
    width = 0.8 / len(runs)
    for ax, source in zip(axes, TEST_SOURCES, strict=True):
        for r, run in enumerate(runs):
            entries = [(run.metrics[source].get("per_class_f1") or {}).get(c) for c in CLASSES]
            values = np.array([np.nan if e is None else e["value"] for e in entries], dtype=np.float64)
            low = np.array([0.0 if e is None or e["ci_low"] is None else e["value"] - e["ci_low"] for e in entries])
            high = np.array([0.0 if e is None or e["ci_high"] is None else e["ci_high"] - e["value"] for e in entries])
            x = np.arange(K) + (r - (len(runs) - 1) / 2) * width
            ax.bar(x, values, width, yerr=np.vstack([low, high]), capsize=2, label=run.name)
        ax.set_xticks(range(K), CLASSES)
        ax.set_ylim(0, 1)
        ax.set_title(SOURCE_LABELS[source])
        ax.set_ylabel("F1")
    axes[0].legend(fontsize=8, loc="upper left")
    return Plot(
        "per_class_f1.png",
        "Per-class F1 with 95 % bootstrap CIs (error bars); no bar = class absent from that test set.",
        _png(fig),
    )


def plot_curves(run: Run, filename: str) -> Plot:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 3.8), layout="constrained")
    loss_ax, f1_ax = fig.subplots(1, 2)
    for fold, history in run.histories.items():
        loss_ax.plot(history["epoch"], history["train_loss"], marker=".", label=f"fold {fold}")
        f1_ax.plot(history["epoch"], history["val_macro_f1"], marker=".", label=f"fold {fold}")
    loss_ax.set(xlabel="epoch", ylabel="train loss", title="training loss")
    f1_ax.set(xlabel="epoch", ylabel="macro-F1", title="validation macro-F1")
    for ax in (loss_ax, f1_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    f1_ax.legend(fontsize=8)
    fig.suptitle(run.name)
    return Plot(filename, f"Training curves of {run.name}, one line per fold.", _png(fig))


def plot_reliability(run: Run, filename: str) -> Plot:
    from matplotlib.figure import Figure

    sources = list(run.calibration["sources"])
    fig = Figure(figsize=(4.2 * len(sources), 4.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(sources)))
    for ax, source in zip(axes, sources, strict=True):
        info = run.calibration["sources"][source]
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
        for key, label in (("reliability_before", "before"), ("reliability_after", "after")):
            curve = pd.DataFrame(info[key])
            curve = curve[curve["count"] > 0]
            ece = info[f"ece_{label}"]
            ax.plot(curve["confidence"], curve["accuracy"], marker="o", label=f"{label} (ECE {ece:.3f})")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
               title=SOURCE_LABELS.get(source, source))
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(run.name)
    return Plot(filename, f"Reliability diagrams of {run.name}, before and after temperature scaling.", _png(fig))


def build_plots(runs: list[Run]) -> list[Plot]:
    plots = [plot_per_class_f1(runs)]
    plots += [plot_reliability(run, f"reliability_{_slug(i, run.name)}.png")
              for i, run in enumerate(runs, 1) if run.calibration]
    plots += [plot_confusions(run, f"confusion_{_slug(i, run.name)}.png") for i, run in enumerate(runs, 1)]
    plots += [plot_curves(run, f"curves_{_slug(i, run.name)}.png") for i, run in enumerate(runs, 1) if run.histories]
    return plots


def _intro(runs: list[Run]) -> list[str]:
    no_curves = [run.name for run in runs if not run.histories]
    lines = [f"- {run.name}: {run.description or 'no description'} (`{run.run_dir}`)" for run in runs]
    if no_curves:
        lines.append(f"- no fold_<k>/history.csv, so no training curves: {', '.join(no_curves)}")
    return lines


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(runs: list[Run], tables: list[Table], plots: list[Plot]) -> str:
    lines = ["# Cross-dataset report", "", *_intro(runs)]
    for table in tables:
        lines += ["", f"## {table.title}", "", "| " + " | ".join(map(_md_cell, table.header)) + " |"]
        lines.append("|" + ":--|" * table.text_columns + "--:|" * (len(table.header) - table.text_columns))
        lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in table.rows]
        if table.note:
            lines += ["", table.note]
    lines += ["", "## Figures"]
    for plot in plots:
        lines += ["", f"![{plot.caption}](figures/{plot.filename})", "", plot.caption]
    return "\n".join(lines) + "\n"


HTML_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.85em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.5em; text-align: right; }
th, td.text { text-align: left; }
tr.paper td { color: #666; font-style: italic; }
p.note { font-size: 0.85em; color: #555; max-width: 60em; }
figure { margin: 1em 0; } img { max-width: 100%; }
"""


def render_html(runs: list[Run], tables: list[Table], plots: list[Plot]) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>Cross-dataset report</title>',
        f"<style>{HTML_STYLE}</style></head><body>",
        "<h1>Cross-dataset report</h1>",
        "<ul>" + "".join(f"<li>{esc(line.removeprefix('- '))}</li>" for line in _intro(runs)) + "</ul>",
    ]
    for table in tables:
        parts.append(f"<h2>{esc(table.title)}</h2><table><thead><tr>")
        parts.append("".join(f"<th>{esc(cell)}</th>" for cell in table.header) + "</tr></thead><tbody>")
        for row in table.rows:
            css = ' class="paper"' if row[0].startswith(PAPER_LABEL) else ""
            cells = (
                f'<td class="text">{esc(cell)}</td>' if i < table.text_columns else f"<td>{esc(cell)}</td>"
                for i, cell in enumerate(row)
            )
            parts.append(f"<tr{css}>" + "".join(cells) + "</tr>")
        parts.append("</tbody></table>")
        if table.note:
            parts.append(f'<p class="note">{esc(table.note)}</p>')
    parts.append("<h2>Figures</h2>")
    for plot in plots:
        data = base64.b64encode(plot.png).decode("ascii")
        parts.append(
            f'<figure><img alt="{esc(plot.caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(plot.caption)}</figcaption></figure>"
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def render_text(summary: dict[str, Any]) -> str:
    """The few lines printed to stdout: macro-F1 per source, the gap, and each comparison."""
    lines = []
    for name, entry in summary["experiments"].items():
        lines.append(
            f"{name}: macro-F1 HAM {_value(entry['test']['ham']['macro_f1'])}, "
            f"ISIC {_value(entry['test']['isic']['macro_f1'])}, gap {_value(entry['gap']['macro_f1'], signed=True)}"
        )
    for key, comparison in summary["gap_reduction"].items():
        relative = comparison["macro_f1"]["relative"]
        lines.append(
            f"{key}: macro-F1 gap reduction {_value(comparison['macro_f1'], signed=True)}"
            + ("" if relative is None else f" ({relative:+.1f} % of the reference gap)")
            + f", ISIC macro-F1 gain {_value(comparison['isic_macro_f1_gain'], signed=True)}"
        )
    return "\n".join(lines) + "\n"


def write_report(run_dirs: Sequence[str | Path], out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Load the runs, compare each with the first, and write the report folder in one atomic step."""
    runs = load_runs(run_dirs)
    summary = build_summary(runs, bootstrap_setup(runs[0].metrics))
    tables = build_tables(runs, summary)
    plots = build_plots(runs)
    with atomic_directory(out, overwrite=overwrite) as staging:
        (staging / "figures").mkdir()
        for plot in plots:
            (staging / "figures" / plot.filename).write_bytes(plot.png)
        (staging / "report.md").write_text(render_markdown(runs, tables, plots))
        (staging / "report.html").write_text(render_html(runs, tables, plots))
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
