"""The ablation section of a report (``crossderm report --ablation DIR``): the table of ``crossderm ablate``
and a plot of every variant's Δ macro-F1 from the baseline per test site, with the paired CIs.

Reads ``DIR/ablation.json`` and ``DIR/ablation_results.json`` as written by ``crossderm ablate``
(:mod:`crossderm.evaluate.ablation_stats` computes and formats them); the variants' run folders
``DIR/<variant>/`` are the report's runs, baseline first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crossderm.errors import CrossdermError
from crossderm.evaluate.ablation_stats import (
    PLAN_FILE,
    RESULTS_FILE,
    TABLE_HEADER,
    table_note,
    table_rows,
)
from crossderm.fsutil import read_json
from crossderm.report.plots import Plot, _png
from crossderm.report.tables import Table
from crossderm.runfolder import RunFolder


@dataclass(frozen=True)
class Ablation:
    path: Path
    plan: dict[str, Any]
    results: dict[str, Any]

    @property
    def run_dirs(self) -> list[Path]:
        """The variants' run folders, baseline first."""
        return [self.path / variant for variant in self.results["variants"]]


def load_ablation(path: str | Path) -> Ablation:
    """The plan and results of an ablation folder; a missing or unfinished one is a one-line error."""
    path = Path(path)
    plan = read_json(path / PLAN_FILE, f"is {path} a `crossderm ablate` folder?")
    results = read_json(path / RESULTS_FILE, f"run `crossderm ablate --out {path} --pool` first")
    planned = [variant.get("name") for variant in plan.get("variants", [])]
    if results.get("variants") != planned or results.get("baseline") != plan.get("baseline"):
        raise CrossdermError(f"{path / RESULTS_FILE}: variants {results.get('variants')} are not those of the plan "
                             f"({planned}); rerun `crossderm ablate --out {path} --pool`")
    for section in ("sources", "sites", "site_summary", "gaps", "bootstrap", "metrics"):
        if section not in results:
            raise CrossdermError(f"{path / RESULTS_FILE}: no {section!r} section (rerun `crossderm ablate --pool`)")
    for variant in planned:
        own = RunFolder(path / variant).require().read_metrics()
        same = {s: {m: (cell.get(variant) or {}).get(m) for m in results["metrics"]}
                for s, cell in results["sources"].items()}
        if same != {s: {m: own["sources"].get(s, {}).get(m) for m in results["metrics"]} for s in same}:
            raise CrossdermError(f"{path / RESULTS_FILE}: {variant}'s numbers differ from its metrics.json (pooled "
                                 f"again since?); rerun `crossderm ablate --out {path} --pool`")
    return Ablation(path, plan, results)


def ablation_table(ablation: Ablation) -> Table:
    results = ablation.results
    settings = "; ".join(
        f"{v['name']}: " + ", ".join(f"{k}={value}" for k, value in v["overrides"].items())
        for v in ablation.plan["variants"]
    )
    fixed = ablation.plan.get("overrides") or []
    common = f"All variants: {', '.join(fixed)}. " if fixed else ""
    return Table(
        title=f"Ablation: every variant against {results['baseline']} (protocol {ablation.plan['protocol']})",
        header=TABLE_HEADER,
        rows=table_rows(results),
        note=f"{common}Variants: {settings}. " + table_note(results),
        text_columns=2,
    )


def _delta_points(results: dict[str, Any]) -> tuple[list[str], dict[str, list[dict[str, Any] | None]]]:
    """x labels (the sites, or the sources without sites; then mean and worst site) and each variant's Δ."""
    baseline = results["baseline"]
    variants = [name for name in results["variants"] if name != baseline]
    section = results["sites"] or results["sources"]
    labels = list(section)
    deltas: dict[str, list[dict[str, Any] | None]] = {
        name: [(section[key].get(name) or {}).get("delta", {}).get("macro_f1") for key in labels] for name in variants
    }
    if results["site_summary"]:
        labels += ["mean over sites", "worst site"]
        for name in variants:
            delta = (results["site_summary"].get(name) or {}).get("delta") or {}
            deltas[name] += [delta.get("mean_macro_f1"), delta.get("min_macro_f1")]
    return labels, deltas


def plot_ablation(ablation: Ablation) -> Plot | None:
    """Δ macro-F1 (variant - baseline) per test site with the paired CI bars, one marker per variant."""
    from matplotlib.figure import Figure

    results = ablation.results
    labels, deltas = _delta_points(results)
    if not labels or not deltas:
        return None
    fig = Figure(figsize=(3 + 0.8 * len(labels), 4.4), layout="constrained")
    ax = fig.subplots()
    ax.axhline(0, color="grey", linewidth=1, linestyle=":")
    width = 0.7 / len(deltas)
    markers = "osD^vP*Xh<>"
    for v, (name, entries) in enumerate(deltas.items()):
        values = np.array([np.nan if e is None or e.get("value") is None else e["value"] for e in entries])
        low = [0.0 if e is None or e.get("ci_low") is None else e["value"] - e["ci_low"] for e in entries]
        high = [0.0 if e is None or e.get("ci_high") is None else e["ci_high"] - e["value"] for e in entries]
        x = np.arange(len(labels)) + (v - (len(deltas) - 1) / 2) * width
        ax.errorbar(x, values, yerr=np.vstack([low, high]), fmt=markers[v % len(markers)], capsize=3, label=name)
    section = results["sites"] or results["sources"]
    for x, key in enumerate(section):
        cell = section[key].get(results["baseline"]) or {}
        if cell.get("too_few"):
            ax.text(x, 0, f"few ({cell['n']})", rotation=90, ha="center", va="bottom", fontsize=7, color="#666666")
    if results["site_summary"]:
        ax.axvline(len(labels) - 2.5, color="#bbbbbb", linewidth=1)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set(ylabel=f"Δ macro-F1 vs {results['baseline']}", title="Ablation: variant - baseline per test site")
    ax.legend(fontsize=8, loc="best")
    ci = results["bootstrap"]["ci"]
    return Plot(
        "ablation_delta_macro_f1.png",
        f"Δ macro-F1 of each variant from the baseline ({results['baseline']}) per test site, with paired {ci:.0%} "
        "bootstrap CIs (the same image resamples for both runs); right of the line: mean over sites and worst "
        "site (per-resample minimum). 'few (n)' = too few images at that site for a value.",
        _png(fig),
    )
