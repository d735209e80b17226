"""Paired statistics of an ablation: each variant minus the baseline, on the same images (``crossderm ablate``).

The variants of an ablation predict the same test images, so the CI of a difference resamples the same images
for both runs (:func:`~crossderm.evaluate.metrics.bootstrap_confusions` over the joint (true, pred_baseline,
pred_variant) cells), as :mod:`crossderm.evaluate.compare` does for two runs of the report. Generators follow
``crossderm evaluate``: per source ``source_rng(seed, source)``, per site ``source_rng(seed, "source/site")``.

* Per source and per site (key ``"source/site"``, a blank site is ``"missing"``): Δ = variant - baseline of
  macro-F1 and balanced accuracy, with the paired CI. A site with fewer than ``MIN_GROUP_IMAGES`` images is
  ``too_few`` (no values), as in metrics.json.
* Mean over sites and worst site (the minimum over sites of macro-F1), over the sites with enough images (at
  least two): the difference of the statistics, each resample taking the *same* site resamples for both runs
  (sites resampled independently of each other); the minimum is taken per resample, so its CI allows for
  another site being the worst in another sample (metrics.json's ``min_macro_f1``).
* Each gap (reference source - other source): variant gap - baseline gap, per metric; negative = the variant
  closes the gap. Within a source the two runs are paired, the sources are independent.

Point values are the differences of the runs' own point values (metrics.json), to the last bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from crossderm.defaults import BOOTSTRAP_SEED, CI_LEVEL, MIN_GROUP_IMAGES, N_BOOTSTRAP, REFERENCE_SOURCE
from crossderm.evaluate.compare import paired_draws, paired_labels
from crossderm.evaluate.groups import group_values
from crossderm.evaluate.metrics import (
    HEADLINE_METRICS,
    gap_name,
    interval,
)

# The files of an ablation folder (crossderm.train.ablation writes them, crossderm.report.ablation reads them).
PLAN_FILE = "ablation.json"
RESULTS_FILE = "ablation_results.json"
TABLE_FILE = "ablation.md"
ABLATION_METRICS: tuple[str, ...] = ("macro_f1", "balanced_accuracy")

Draws = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]  # points (2,) and resamples (B, 2) per metric


def _delta(points: np.ndarray, draws: np.ndarray, ci: float) -> dict[str, float | None]:
    """variant - baseline: ``points`` (2,), ``draws`` (B, 2)."""
    return interval(float(points[1] - points[0]), draws[:, 1] - draws[:, 0], ci)


def _by_site(table: pd.DataFrame) -> pd.DataFrame:
    """The table with ``source`` replaced by the site key, so :func:`paired_labels` pairs one site's rows."""
    return table.assign(source=table["source"].astype(str) + "/" + group_values(table, "site"))


def paired_deltas(
    baseline: pd.DataFrame,
    variant: pd.DataFrame,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
    ci: float = CI_LEVEL,
    reference_source: str = REFERENCE_SOURCE,
    names: tuple[str, str] = ("the baseline", "the variant"),
) -> dict[str, Any]:
    """``{"sources", "sites", "site_summary", "gaps"}``: variant - baseline with paired CIs (module docstring).

    Both tables (image_id, source, label, one probability per class; ``site`` for the per-site part) must hold
    the same images with the same labels; ``names`` name them in the error otherwise.
    """
    sources = [str(s) for s in pd.unique(baseline["source"])]
    missing = sorted(set(sources) ^ {str(s) for s in pd.unique(variant["source"])})
    if missing:
        paired_labels(baseline, variant, missing[0], names)  # raises, naming an image only one table has
    per_source: dict[str, dict[str, Any]] = {}
    source_draws: dict[str, Draws] = {}
    for source in sources:
        n, points, draws = paired_draws(baseline, variant, source, names, n_resamples, seed)
        source_draws[source] = points, draws
        per_source[source] = {"n": n, **{m: _delta(points[m], draws[m], ci) for m in ABLATION_METRICS}}

    sites: dict[str, dict[str, Any]] = {}
    site_draws: dict[str, Draws] = {}
    if "site" in baseline.columns and "site" in variant.columns:
        keyed = (_by_site(baseline), _by_site(variant))
        for key in sorted(pd.unique(keyed[0]["source"]), key=lambda k: (sources.index(k.split("/")[0]), k)):
            n = int((keyed[0]["source"] == key).sum())
            if n < MIN_GROUP_IMAGES:
                sites[key] = {"n": n, "too_few": True}
                continue
            n, points, draws = paired_draws(*keyed, key, names, n_resamples, seed)
            site_draws[key] = points, draws
            sites[key] = {"n": n, **{m: _delta(points[m], draws[m], ci) for m in ABLATION_METRICS}}

    summary = None
    if len(site_draws) >= 2:
        keys = sorted(site_draws)
        points = np.stack([site_draws[k][0]["macro_f1"] for k in keys])  # (S, 2)
        draws = np.stack([site_draws[k][1]["macro_f1"] for k in keys], axis=1)  # (B, S, 2)
        summary = {
            "sites": keys,
            "mean_macro_f1": _delta(points.mean(axis=0), draws.mean(axis=1), ci),
            "min_macro_f1": _delta(points.min(axis=0), draws.min(axis=1), ci),
        }

    gaps: dict[str, dict[str, Any]] = {}
    if reference_source in source_draws:
        ref_points, ref_draws = source_draws[reference_source]
        for other in (s for s in sources if s != reference_source):
            oth_points, oth_draws = source_draws[other]
            gaps[gap_name(reference_source, other)] = {
                m: _delta(ref_points[m] - oth_points[m], ref_draws[m] - oth_draws[m], ci) for m in ABLATION_METRICS
            }
    return {"sources": per_source, "sites": sites, "site_summary": summary, "gaps": gaps}


def _own(cell: dict[str, Any] | None) -> dict[str, Any]:
    """A variant's own n and metric values from one metrics.json cell; a too-few cell stays too few."""
    cell = cell or {}
    if cell.get("too_few"):
        return {"n": cell.get("n"), "too_few": True}
    return {"n": cell.get("n"), **{m: cell.get(m) for m in ABLATION_METRICS}}


def ablation_results(
    baseline: str,
    predictions: dict[str, pd.DataFrame],
    metrics: dict[str, dict[str, Any]],
    n_resamples: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
    ci: float = CI_LEVEL,
    reference_source: str = REFERENCE_SOURCE,
) -> dict[str, Any]:
    """The ablation's results: per source, site, summary and gap, one entry per variant (its own values from
    its metrics.json, and for every variant but the baseline its ``delta`` from :func:`paired_deltas`).

    ``predictions`` and ``metrics`` are keyed by variant name, in the plan's order (baseline included).
    """
    names = list(predictions)
    deltas = {
        name: paired_deltas(predictions[baseline], predictions[name], n_resamples, seed, ci, reference_source,
                            names=(f"variant {baseline}", f"variant {name}"))
        for name in names if name != baseline
    }
    out: dict[str, Any] = {"sources": {}, "sites": {}, "site_summary": {}, "gaps": {}}
    for name in names:
        own, delta = metrics[name], deltas.get(name)
        for section in ("sources", "sites"):
            for key, cell in (own.get(section) or {}).items():
                entry = _own(cell)
                if delta is not None and not entry.get("too_few") and key in delta[section]:
                    entry["delta"] = {m: delta[section][key].get(m) for m in ABLATION_METRICS}
                out[section].setdefault(key, {})[name] = entry
        summary = own.get("site_summary")
        if summary:
            entry = {k: summary[k] for k in ("sites", "mean_macro_f1", "worst_site", "min_macro_f1")}
            if delta is not None and delta["site_summary"] is not None:
                entry["delta"] = {k: delta["site_summary"][k] for k in ("mean_macro_f1", "min_macro_f1")}
            out["site_summary"][name] = entry
        for pair, gap in (own.get("gaps") or {}).items():
            entry = {m: gap.get(m) for m in ABLATION_METRICS}
            if delta is not None and pair in delta["gaps"]:
                entry["delta"] = delta["gaps"][pair]
            out["gaps"].setdefault(pair, {})[name] = entry
    return {
        "baseline": baseline,
        "variants": names,
        "metrics": list(ABLATION_METRICS),
        "reference_source": reference_source,
        "bootstrap": {"n_resamples": n_resamples, "seed": seed, "ci": ci, "method": "paired percentile"},
        **out,
    }


# ---- the table (ablation.md and the report) ------------------------------------------------------------------

def format_interval(entry: dict[str, Any] | None, signed: bool = False) -> str:
    """``value [low, high]`` to 4 decimals (signed for a difference); "n/a" where undefined."""
    if entry is None or entry.get("value") is None:
        return "n/a"
    spec = "+.4f" if signed else ".4f"
    text = format(entry["value"], spec)
    if entry.get("ci_low") is not None and entry.get("ci_high") is not None:
        text += f" [{entry['ci_low']:{spec}}, {entry['ci_high']:{spec}}]"
    return text


TABLE_HEADER = (
    "test set", "variant", "n", *(HEADLINE_METRICS[m] for m in ABLATION_METRICS),
    *(f"Δ {HEADLINE_METRICS[m]} vs baseline" for m in ABLATION_METRICS),
)


def table_rows(results: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per (test set, variant): each site, each source, mean over sites, worst site, each gap.

    The baseline's Δ cells are "baseline"; a too-few site's cells "too few".
    """
    baseline = results["baseline"]
    metrics = results["metrics"]
    rows: list[tuple[str, ...]] = []

    def deltas(name: str, entry: dict[str, Any], keys: list[str | None]) -> list[str]:
        if name == baseline:
            return ["" if k is None else "baseline" for k in keys]
        delta = entry.get("delta") or {}
        return ["" if k is None else format_interval(delta.get(k), signed=True) for k in keys]

    for label, section in (("site", "sites"), ("source", "sources")):
        for key, per_variant in results[section].items():
            for name, entry in per_variant.items():
                if entry.get("too_few"):
                    rows.append((f"{label} {key}", name, str(entry["n"]), *["too few"] * 2 * len(metrics)))
                    continue
                rows.append((f"{label} {key}", name, str(entry["n"]),
                             *(format_interval(entry.get(m)) for m in metrics), *deltas(name, entry, metrics)))
    empty = [""] * (len(metrics) - 1)
    for label, key in (("mean over sites", "mean_macro_f1"), ("worst site", "min_macro_f1")):
        for name, entry in results["site_summary"].items():
            value = format_interval(entry[key])
            if key == "min_macro_f1":
                value += f" ({entry['worst_site']['site']})"
            rows.append((label, name, str(len(entry["sites"])), value, *empty,
                         *deltas(name, entry, [key, *[None] * (len(metrics) - 1)])))
    for pair, per_variant in results["gaps"].items():
        for name, entry in per_variant.items():
            rows.append((f"gap {pair}", name, "", *(format_interval(entry.get(m), signed=True) for m in metrics),
                         *deltas(name, entry, metrics)))
    return rows


def table_note(results: dict[str, Any]) -> str:
    setup = results["bootstrap"]
    return (
        f"Value [{setup['ci']:.0%} CI] of each variant from its own metrics.json (n: images, or sites for the "
        f"mean and worst site); Δ = variant - {results['baseline']} with the paired {setup['ci']:.0%} CI "
        f"({setup['n_resamples']} resamples of the "
        f"same images for both, seed {setup['seed']}): a Δ whose CI excludes 0 is a difference the test images "
        "support. Mean over sites: unweighted; worst site: the minimum over sites of macro-F1 (the worst site "
        "named), its CI and its Δ's from the per-resample minimum. Gap = reference source - other source: where "
        "the gap is positive, a negative Δ gap means the variant narrows it. Sites with too few images have no values."
    )


def render_markdown(results: dict[str, Any], plan: dict[str, Any] | None = None) -> str:
    """ablation.md: the variants (their overrides), then the one table and its note."""
    lines = ["# Ablation", ""]
    if plan:
        fixed = f" with {', '.join(plan['overrides'])}" if plan.get("overrides") else ""
        lines += [f"{plan['config']}{fixed} on {plan['data']}, protocol {plan['protocol']}, "
                  f"{len(plan['jobs'])} jobs; baseline: {plan['baseline']}.", ""]
        if any(item.partition("=")[0].strip() == "only_folds" for item in plan.get("overrides", [])):
            lines += ["**Partial evaluation** (`only_folds`): every figure is on those folds' test images only.", ""]
        for variant in plan["variants"]:
            settings = ", ".join(f"{k}={v}" for k, v in variant["overrides"].items())
            lines.append(f"- {variant['name']}: {settings}")
        lines.append("")
    lines += ["| " + " | ".join(TABLE_HEADER) + " |", "|:--|:--|--:|" + "--:|" * 2 * len(results["metrics"])]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table_rows(results)]
    return "\n".join([*lines, "", table_note(results)]) + "\n"
