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


def build_plots(runs: list[Run], ci: float) -> list[Plot]:
    """Per-class F1 of all runs, then per run: reliability (if calibrated), confusions, curves (if any)."""
    numbered = list(enumerate(runs, 1))
    plots = [plot_per_class_f1(runs, ci)]
    plots += [
        plot_reliability(run, run.calibration, f"reliability_{_slug(i, run.name)}.png")
        for i, run in numbered
        if run.calibration
    ]
    plots += [plot_confusions(run, f"confusion_{_slug(i, run.name)}.png") for i, run in numbered]
    plots += [plot_curves(run, f"curves_{_slug(i, run.name)}.png") for i, run in numbered if run.histories]
    return plots
