"""The few figures the trackers log on pool: confusion matrices, per-class F1, per-site macro-F1 with CIs.

The report draws richer plots, but the train layer may not import it, so these few are drawn here: matplotlib
``Figure``s on the Agg canvas, never pyplot.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np

from crossderm.labels import CLASSES

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def figures(metrics: dict[str, Any]) -> dict[str, Figure]:
    """Confusion matrices and per-class F1 per source, per-site macro-F1 with CIs, by tag."""
    from matplotlib.figure import Figure

    sources = metrics.get("sources", {})
    out: dict[str, Figure] = {}
    for source, summary in sources.items():
        cm = np.asarray(summary["confusion_matrix"], dtype=float)
        fig = Figure(figsize=(5, 4.4), layout="constrained")
        ax = fig.subplots()
        rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
        for (i, j), count in np.ndenumerate(cm):
            ax.text(j, i, f"{int(count)}", ha="center", va="center", fontsize=7,
                    color="white" if rows[i, j] > 0.5 else "black")
        ax.set(xticks=range(len(CLASSES)), yticks=range(len(CLASSES)), xticklabels=CLASSES, yticklabels=CLASSES,
               xlabel="predicted", ylabel="true", title=f"{source}: confusion matrix (n = {summary['n']})")
        out[f"confusion/{source}"] = fig
    if sources:
        fig = Figure(figsize=(7, 3.6), layout="constrained")
        ax = fig.subplots()
        width = 0.8 / len(sources)
        for index, (source, summary) in enumerate(sources.items()):
            entries = [summary["per_class_f1"].get(name) for name in CLASSES]
            _bars(ax, np.arange(len(CLASSES)) + (index - (len(sources) - 1) / 2) * width, entries, width, source)
        ax.set(xticks=range(len(CLASSES)), xticklabels=CLASSES, ylim=(0, 1), ylabel="F1", title="per-class F1")
        ax.legend(fontsize=8)
        out["per_class_f1"] = fig
    sites = {key: cell for key, cell in (metrics.get("sites") or {}).items() if not cell.get("too_few")}
    if sites:
        fig = Figure(figsize=(max(5, 0.6 * len(sites) + 2), 3.8), layout="constrained")
        ax = fig.subplots()
        _bars(ax, np.arange(len(sites)), [cell.get("macro_f1") for cell in sites.values()], 0.7, None)
        ax.set_xticks(range(len(sites)), list(sites), rotation=30, ha="right", fontsize=8)
        ax.set(ylim=(0, 1), ylabel="macro-F1", title="per-site macro-F1")
        out["per_site_macro_f1"] = fig
    return out


def _bars(ax: Any, x: np.ndarray, entries: list[dict[str, Any] | None], width: float, label: str | None) -> None:
    """Bars of ``entry["value"]`` with CI whiskers; undefined entries drawn as nothing."""
    value = np.array([np.nan if not e or e.get("value") is None else e["value"] for e in entries], dtype=float)
    low = np.array([np.nan if not e or e.get("ci_low") is None else e["ci_low"] for e in entries], dtype=float)
    high = np.array([np.nan if not e or e.get("ci_high") is None else e["ci_high"] for e in entries], dtype=float)
    errors = np.nan_to_num(np.stack([value - low, high - value]), nan=0.0).clip(min=0)
    ax.bar(x, np.nan_to_num(value), width, yerr=errors, capsize=2, label=label)


def _canvas(fig: Figure) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas


def figure_rgb(fig: Figure) -> np.ndarray:
    """HWC uint8 RGB pixels of ``fig`` (for ``add_image``; ``add_figure`` would import pyplot)."""
    return np.asarray(_canvas(fig).buffer_rgba())[..., :3].copy()


def figure_png(fig: Figure) -> bytes:
    _canvas(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()

