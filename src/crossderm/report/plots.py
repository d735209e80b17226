"""The report's figures (matplotlib, Agg only): one panel per test source the runs actually have.

matplotlib is imported inside the functions: loading runs or building tables never pays for it.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from crossderm.labels import CLASSES
from crossderm.report.groups import Cells, RunGroups, matrix_tests
from crossderm.report.runs import Run, report_sources
from crossderm.report.tables import source_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

K = len(CLASSES)


@dataclass(frozen=True)
class Plot:
    """One PNG: written to ``figures/`` for the Markdown, embedded as base64 in the HTML."""

    filename: str
    caption: str
    png: bytes


def _png(fig: Figure) -> bytes:
    """PNG bytes without the software/date metadata, so equal plots give equal files."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    return buffer.getvalue()


def _panels(fig: Figure, n: int, sharey: bool = False) -> list[Axes]:
    """``n`` side-by-side axes as a list, also when ``n`` is 1 (subplots then returns a bare Axes)."""
    return list(np.atleast_1d(fig.subplots(1, n, sharey=sharey)))


def _slug(index: int, name: str) -> str:
    """File-name-safe and unique even when two names clean up to the same text."""
    return f"{index:02d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', name).strip('_.') or 'run'}"


def plot_confusions(run: Run, filename: str) -> Plot:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1 + 4.5 * len(run.sources), 4.6), layout="constrained")
    axes = _panels(fig, len(run.sources))
    for ax, source in zip(axes, run.sources, strict=True):
        cm = np.asarray(run.metrics["sources"][source]["confusion_matrix"], dtype=np.float64)
        support = cm.sum(axis=1, keepdims=True)
        rates = np.divide(cm, support, out=np.zeros_like(cm), where=support > 0)
        image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        for i in range(K):
            for j in range(K):
                color = "white" if rates[i, j] > 0.5 else "black"
                ax.text(j, i, f"{rates[i, j]:.2f}", ha="center", va="center", fontsize=7, color=color)
        ax.set_xticks(range(K), CLASSES, rotation=45)
        ax.set_yticks(range(K), CLASSES)
        ax.set(xlabel="predicted", ylabel="true", title=f"{source_label(source)} (n = {int(cm.sum())})")
    fig.colorbar(image, ax=axes, shrink=0.8, label="fraction of the true class")
    fig.suptitle(run.name)
    return Plot(filename, f"Row-normalised confusion matrices of {run.name}.", _png(fig))


def plot_per_class_f1(runs: list[Run], ci: float) -> Plot:
    from matplotlib.figure import Figure

    sources = report_sources(runs)
    fig = Figure(figsize=(1 + 5 * len(sources), 4.2), layout="constrained")
    axes = _panels(fig, len(sources), sharey=True)
    width = 0.8 / len(runs)
    for ax, source in zip(axes, sources, strict=True):
        for r, run in enumerate(runs):
            if source not in run.sources:
                continue
            per_class = run.metrics["sources"][source].get("per_class_f1") or {}
            entries = [per_class.get(c) for c in CLASSES]
            values = np.array([np.nan if e is None else e["value"] for e in entries], dtype=np.float64)
            low = np.array([0.0 if e is None or e["ci_low"] is None else e["value"] - e["ci_low"] for e in entries])
            high = np.array([0.0 if e is None or e["ci_high"] is None else e["ci_high"] - e["value"] for e in entries])
            x = np.arange(K) + (r - (len(runs) - 1) / 2) * width
            ax.bar(x, values, width, yerr=np.vstack([low, high]), capsize=2, label=run.name)
        ax.set_xticks(range(K), CLASSES)
        ax.set(ylim=(0, 1), title=source_label(source), ylabel="F1")
    axes[0].legend(fontsize=8, loc="upper left")
    return Plot(
        "per_class_f1.png",
        f"Per-class F1 with {ci:.0%} bootstrap CIs (error bars); no bar = class absent from that test set "
        "or source not tested by that run.",
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


def plot_reliability(run: Run, calibration: dict[str, Any], filename: str) -> Plot:
    from matplotlib.figure import Figure

    sources = list(calibration["sources"])
    fig = Figure(figsize=(4.2 * len(sources), 4.0), layout="constrained")
    for ax, source in zip(_panels(fig, len(sources)), sources, strict=True):
        info = calibration["sources"][source]
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
        for key, label in (("reliability_before", "before"), ("reliability_after", "after")):
            curve = pd.DataFrame(info[key])
            curve = curve[curve["count"] > 0]
            ece = info[f"ece_{label}"]
            ax.plot(curve["confidence"], curve["accuracy"], marker="o", label=f"{label} (ECE {ece:.3f})")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=source_label(source))
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(run.name)
    return Plot(filename, f"Reliability diagrams of {run.name}, before and after temperature scaling.", _png(fig))


def _error_bars(entries: list[dict[str, Any] | None]) -> tuple[np.ndarray, np.ndarray]:
    """Values (NaN where none) and the (2, n) distances to the CI ends (0 where none)."""
    values = np.array([np.nan if e is None or e.get("value") is None else e["value"] for e in entries])
    low = [0.0 if e is None or e.get("ci_low") is None else e["value"] - e["ci_low"] for e in entries]
    high = [0.0 if e is None or e.get("ci_high") is None else e["ci_high"] - e["value"] for e in entries]
    return values, np.vstack([low, high])


def plot_site_f1(runs: list[Run], groups: dict[str, RunGroups], ci: float) -> Plot | None:
    """Per-site macro-F1 with CI bars: one bar group per site, one bar per run; "few" marks a too-few cell."""
    from matplotlib.figure import Figure

    with_sites = [run for run in runs if groups[run.name].sites]
    if not with_sites:
        return None
    keys = list(dict.fromkeys(key for run in with_sites for key in groups[run.name].sites))
    fig = Figure(figsize=(2.5 + 0.45 * len(keys) * (1 + len(with_sites)), 4.4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(with_sites)
    for r, run in enumerate(with_sites):
        cells = [groups[run.name].sites.get(key) for key in keys]
        values, errors = _error_bars([None if c is None else c.get("macro_f1") for c in cells])
        x = np.arange(len(keys)) + (r - (len(with_sites) - 1) / 2) * width
        ax.bar(x, values, width, yerr=errors, capsize=2, label=run.name)
        for xi, cell in zip(x, cells, strict=True):
            if cell is not None and cell.get("too_few"):
                ax.text(xi, 0.02, f"few ({cell['n']})", rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(keys)), keys, rotation=30, ha="right")
    ax.set(ylim=(0, 1), ylabel="macro-F1", title="macro-F1 per site")
    ax.legend(fontsize=8, loc="upper left")
    return Plot(
        "site_macro_f1.png",
        f"Macro-F1 per site ('<source>/<site>') with {ci:.0%} bootstrap CIs (error bars); 'few (n)' = too few "
        "images for a value; no bar = site not tested by that run.",
        _png(fig),
    )


def plot_site_matrix(run: Run, matrix: dict[str, Cells], filename: str) -> Plot:
    """Heatmap of macro-F1, training site x test site; grey = not predicted or too few images."""
    import matplotlib as mpl
    from matplotlib.figure import Figure

    trains, tests = list(matrix), matrix_tests(matrix)
    values = np.full((len(trains), len(tests)), np.nan)
    fig = Figure(figsize=(2.5 + 1.1 * len(tests), 1.8 + 0.6 * len(trains)), layout="constrained")
    ax = fig.subplots()
    for i, train in enumerate(trains):
        for j, test in enumerate(tests):
            cell = matrix[train].get(test)
            entry = None if cell is None or cell.get("too_few") else cell.get("macro_f1")
            if entry is not None and entry.get("value") is not None:
                values[i, j] = entry["value"]
            label = "" if cell is None else "few" if cell.get("too_few") else f"{values[i, j]:.2f}"
            dark = not np.isnan(values[i, j]) and values[i, j] < 0.5  # viridis is dark below the middle
            ax.text(j, i, label, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    cmap = mpl.colormaps["viridis"].with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=1)
    ax.set_xticks(range(len(tests)), tests, rotation=30, ha="right")
    ax.set_yticks(range(len(trains)), trains)
    ax.set(xlabel="test site", ylabel="training site", title=f"{run.name}: macro-F1, train site x test site")
    fig.colorbar(image, ax=ax, shrink=0.8, label="macro-F1")
    return Plot(
        filename,
        f"Site matrix of {run.name}: macro-F1 of each training site's model on each test site (grey = not "
        "predicted or too few images; CIs in the table).",
        _png(fig),
    )


def build_plots(runs: list[Run], ci: float, groups: dict[str, RunGroups] | None = None) -> list[Plot]:
    """Per-class F1 of all runs, per-site macro-F1 (if any run has sites), then per run: site matrix (if any),
    reliability (if calibrated), confusions, curves (if any)."""
    numbered = list(enumerate(runs, 1))
    plots = [plot_per_class_f1(runs, ci)]
    if groups:
        site_plot = plot_site_f1(runs, groups, ci)
        plots += [] if site_plot is None else [site_plot]
        plots += [
            plot_site_matrix(run, groups[run.name].site_matrix, f"site_matrix_{_slug(i, run.name)}.png")
            for i, run in numbered
            if groups[run.name].site_matrix
        ]
    plots += [
        plot_reliability(run, run.calibration, f"reliability_{_slug(i, run.name)}.png")
        for i, run in numbered
        if run.calibration
    ]
    plots += [plot_confusions(run, f"confusion_{_slug(i, run.name)}.png") for i, run in numbered]
    plots += [plot_curves(run, f"curves_{_slug(i, run.name)}.png") for i, run in numbered if run.histories]
    return plots
