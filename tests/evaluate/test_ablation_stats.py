"""The ablation's paired differences against scikit-learn on resamples redrawn independently with the same
generators, and their point values against the runs' own metrics.json."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from crossderm.errors import CrossdermError
from crossderm.evaluate.ablation_stats import ablation_results, paired_deltas, render_markdown, table_rows
from crossderm.evaluate.predictions import compute_metrics, source_rng
from crossderm.labels import CLASSES

K = len(CLASSES)
PRIORS = np.array([3, 5, 11, 2, 11, 60, 8], dtype=float)
SITES = {"ham": {"rosendahl": 70, "vidir": 90, "tiny": 12}, "isic": {"bcn": 110, "msk": 60, "": 40}}
B = 60
SEED = 3


def images(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for source, sites in SITES.items():
        for site, n in sites.items():
            for _ in range(n):
                rows.append({"source": source, "site": site, "label": CLASSES[rng.choice(K, p=PRIORS / PRIORS.sum())]})
    frame = pd.DataFrame(rows)
    frame.insert(0, "image_id", [f"IMG_{i:05d}" for i in rng.permutation(len(frame))])
    return frame


def predict(table: pd.DataFrame, noise: np.ndarray, strength: dict[str, float]) -> pd.DataFrame:
    y = table["label"].map(CLASSES.index).to_numpy()
    logits = noise.copy()
    logits[np.arange(len(y)), y] += table["site"].map(strength).fillna(1.0).to_numpy()
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return pd.concat([table.reset_index(drop=True), pd.DataFrame(probs, columns=list(CLASSES))], axis=1)


@pytest.fixture(scope="module")
def tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(11)
    base = images(rng)
    noise = rng.normal(size=(len(base), K))
    baseline = predict(base, noise, {"rosendahl": 2.0, "vidir": 1.6, "bcn": 0.8, "msk": 0.5})
    variant = predict(base, noise + 0.4 * rng.normal(size=noise.shape), {"rosendahl": 1.9, "vidir": 1.7, "bcn": 1.4,
                                                                          "msk": 1.2})
    return baseline, variant.sample(frac=1.0, random_state=2).reset_index(drop=True)  # row order must not matter


def keyed(table: pd.DataFrame, key: str) -> pd.DataFrame:
    """The rows of a source ("ham") or a site ("ham/vidir"; "isic/missing" = blank site), sorted by image_id."""
    source, _, site = key.partition("/")
    chosen = table["source"] == source
    if site:
        chosen &= table["site"].replace("", "missing") == site
    return table[chosen].sort_values("image_id")


_NAIVE: dict[str, dict[str, np.ndarray]] = {}


def naive_draws(baseline: pd.DataFrame, variant: pd.DataFrame, key: str) -> dict[str, np.ndarray]:
    """Cached :func:`naive_draws_of` (the module's tables are fixed)."""
    if key not in _NAIVE:
        _NAIVE[key] = naive_draws_of(baseline, variant, key)
    return _NAIVE[key]


def naive_draws_of(baseline: pd.DataFrame, variant: pd.DataFrame, key: str) -> dict[str, np.ndarray]:
    """(B, 2) macro-F1 and balanced accuracy of both runs per resample, by scikit-learn on resampled images: the
    multinomial over the sorted joint (true, pred_baseline, pred_variant) cells from ``source_rng(SEED, key)``."""
    rows_b, rows_v = keyed(baseline, key), keyed(variant, key)
    assert list(rows_b["image_id"]) == list(rows_v["image_id"])
    y = rows_b["label"].map(CLASSES.index).to_numpy()
    preds = [rows[list(CLASSES)].to_numpy().argmax(axis=1) for rows in (rows_b, rows_v)]
    present = np.unique(y)
    cells, counts = np.unique(np.column_stack([y, *preds]), axis=0, return_counts=True)
    draws = source_rng(SEED, key).multinomial(y.size, counts / y.size, size=B)
    out = {"macro_f1": np.empty((B, 2)), "balanced_accuracy": np.empty((B, 2))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        for b, draw in enumerate(draws):
            sample = np.repeat(cells, draw, axis=0)
            for e in (0, 1):
                out["macro_f1"][b, e] = f1_score(sample[:, 0], sample[:, e + 1], labels=present, average="macro",
                                                 zero_division=0)
                out["balanced_accuracy"][b, e] = balanced_accuracy_score(sample[:, 0], sample[:, e + 1])
    return out


def percentile_ci(samples: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(samples, [2.5, 97.5])
    return float(low), float(high)


@pytest.fixture(scope="module")
def deltas(tables: tuple[pd.DataFrame, pd.DataFrame]) -> dict:
    return paired_deltas(*tables, n_resamples=B, seed=SEED, reference_source="ham")


@pytest.mark.parametrize("key", ["ham", "isic", "ham/rosendahl", "ham/vidir", "isic/bcn", "isic/msk", "isic/missing"])
def test_per_source_and_site_delta_matches_scikit_learn(tables, deltas, key: str) -> None:
    draws = naive_draws(*tables, key)
    entry = (deltas["sources"] if "/" not in key else deltas["sites"])[key]
    assert entry["n"] == len(keyed(tables[0], key))
    for metric, samples in draws.items():
        assert (entry[metric]["ci_low"], entry[metric]["ci_high"]) == pytest.approx(
            percentile_ci(samples[:, 1] - samples[:, 0]), abs=1e-12
        )


def test_site_summary_and_gap_deltas_match_scikit_learn(tables, deltas) -> None:
    sites = ["ham/rosendahl", "ham/vidir", "isic/bcn", "isic/missing", "isic/msk"]
    assert deltas["sites"]["ham/tiny"] == {"n": 12, "too_few": True}
    summary = deltas["site_summary"]
    assert summary["sites"] == sites
    f1 = np.stack([naive_draws(*tables, key)["macro_f1"] for key in sites], axis=1)  # (B, S, 2): same site draws
    mean, worst = f1.mean(axis=1), f1.min(axis=1)
    assert (summary["mean_macro_f1"]["ci_low"], summary["mean_macro_f1"]["ci_high"]) == pytest.approx(
        percentile_ci(mean[:, 1] - mean[:, 0]), abs=1e-12)
    assert (summary["min_macro_f1"]["ci_low"], summary["min_macro_f1"]["ci_high"]) == pytest.approx(
        percentile_ci(worst[:, 1] - worst[:, 0]), abs=1e-12)
    ham, isic = naive_draws(*tables, "ham"), naive_draws(*tables, "isic")
    for metric in ("macro_f1", "balanced_accuracy"):
        gap = ham[metric] - isic[metric]  # (B, 2): each source paired, the sources independent
        entry = deltas["gaps"]["ham - isic"][metric]
        assert (entry["ci_low"], entry["ci_high"]) == pytest.approx(percentile_ci(gap[:, 1] - gap[:, 0]), abs=1e-12)


def test_points_are_the_differences_of_the_runs_own_metrics(tables, deltas) -> None:
    own = [compute_metrics(table, n_resamples=B, seed=SEED, reference_source="ham") for table in tables]
    for metric in ("macro_f1", "balanced_accuracy"):
        for section in ("sources", "sites"):
            for key, entry in deltas[section].items():
                if entry.get("too_few"):
                    assert own[0][section][key]["too_few"]
                    continue
                difference = own[1][section][key][metric]["value"] - own[0][section][key][metric]["value"]
                assert entry[metric]["value"] == pytest.approx(difference, abs=1e-15)
        gap = [o["gaps"]["ham - isic"][metric]["value"] for o in own]
        assert deltas["gaps"]["ham - isic"][metric]["value"] == pytest.approx(gap[1] - gap[0], abs=1e-15)
    for key in ("mean_macro_f1", "min_macro_f1"):
        difference = own[1]["site_summary"][key]["value"] - own[0]["site_summary"][key]["value"]
        assert deltas["site_summary"][key]["value"] == pytest.approx(difference, abs=1e-15)


def test_results_table_has_every_variant_and_row(tables) -> None:
    third = tables[0].copy()  # a variant identical to the baseline: every Δ is exactly 0
    named = {"baseline": tables[0], "sampler-x": tables[1], "same": third}
    metrics = {name: compute_metrics(t, n_resamples=B, seed=SEED, reference_source="ham") for name, t in named.items()}
    results = ablation_results("baseline", named, metrics, n_resamples=B, seed=SEED, reference_source="ham")
    assert results["variants"] == ["baseline", "sampler-x", "same"]
    assert "delta" not in results["sites"]["ham/vidir"]["baseline"]
    assert results["sites"]["ham/vidir"]["same"]["delta"]["macro_f1"] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    assert results["sites"]["ham/vidir"]["sampler-x"]["macro_f1"] == metrics["sampler-x"]["sites"]["ham/vidir"][
        "macro_f1"]
    assert results["site_summary"]["same"]["delta"]["min_macro_f1"]["value"] == 0.0
    labels = [row[0] for row in table_rows(results)]
    assert labels.count("site ham/vidir") == 3 and labels.count("worst site") == 3 and "gap ham - isic" in labels
    assert "too few" in render_markdown(results)


def test_different_images_fail(tables) -> None:
    with pytest.raises(CrossdermError, match="different ham images"):
        paired_deltas(tables[0], tables[1][tables[1]["image_id"] != tables[0]["image_id"].iat[0]], n_resamples=B,
                      names=("variant baseline", "variant x"))
    with pytest.raises(CrossdermError, match="clinic"):
        paired_deltas(tables[0], pd.concat([tables[1], tables[1].head(3).assign(source="clinic")]), n_resamples=B)
