"""The paired comparison of two prediction tables against scikit-learn and a naive loop over resamples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score

from crossderm.errors import CrossdermError
from crossderm.evaluate.compare import paired_comparison
from crossderm.evaluate.predictions import source_rng
from crossderm.labels import CLASSES

K = len(CLASSES)
PRIORS = np.array([3, 5, 11, 2, 11, 60, 8], dtype=float)
SOURCES = ("ham", "isic", "clinic")
N_RESAMPLES = 120


def images(rng: np.random.Generator, n: int = 150) -> pd.DataFrame:
    frames = [
        pd.DataFrame(
            {
                "image_id": [f"{source}_{i:04d}" for i in range(n)],
                "source": source,
                "label": [CLASSES[c] for c in rng.choice(K, size=n, p=PRIORS / PRIORS.sum())],
            }
        )
        for source in SOURCES
    ]
    return pd.concat(frames, ignore_index=True)


def predict(table: pd.DataFrame, noise: np.ndarray, strength: dict[str, float]) -> pd.DataFrame:
    """Shared noise (correlated runs) plus a per-source boost of the true class."""
    y = table["label"].map(CLASSES.index).to_numpy()
    logits = noise.copy()
    logits[np.arange(len(y)), y] += table["source"].map(strength).to_numpy()
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return pd.concat([table, pd.DataFrame(probs, columns=list(CLASSES))], axis=1)


@pytest.fixture
def tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(3)
    base = images(rng)
    noise = rng.normal(size=(len(base), K))
    reference = predict(base, noise, {"ham": 2.2, "isic": 0.6, "clinic": 1.0})
    other = predict(base, noise + 0.3 * rng.normal(size=noise.shape), {"ham": 2.0, "isic": 1.4, "clinic": 1.6})
    # row order must not matter: the other table comes shuffled
    return reference, other.sample(frac=1.0, random_state=1).reset_index(drop=True)


def labels_and_preds(table: pd.DataFrame, source: str) -> tuple[np.ndarray, np.ndarray]:
    rows = table[table["source"] == source].sort_values("image_id")
    return rows["label"].map(CLASSES.index).to_numpy(), rows[list(CLASSES)].to_numpy().argmax(axis=1)


def sk_metric(y: np.ndarray, pred: np.ndarray, metric: str, present: np.ndarray) -> float:
    if metric == "macro_f1":
        return f1_score(y, pred, labels=present, average="macro", zero_division=0)
    return accuracy_score(y, pred)


def naive_metric_draws(reference: pd.DataFrame, other: pd.DataFrame, source: str, metric: str) -> np.ndarray:
    """(B, 2) metric of both runs per resample: the multinomial over the sorted joint cells (the documented
    scheme) turned back into resampled images, each scored by scikit-learn."""
    y, pred_ref = labels_and_preds(reference, source)
    y_oth, pred_oth = labels_and_preds(other, source)
    assert (y == y_oth).all()
    present = np.unique(y)
    cells, counts = np.unique(np.column_stack([y, pred_ref, pred_oth]), axis=0, return_counts=True)
    draws = source_rng(0, source).multinomial(y.size, counts / y.size, size=N_RESAMPLES)
    out = np.empty((N_RESAMPLES, 2))
    for b, draw in enumerate(draws):
        sample = np.repeat(cells, draw, axis=0)
        out[b] = [sk_metric(sample[:, 0], sample[:, e], metric, present) for e in (1, 2)]
    return out


def sk_point(table: pd.DataFrame, source: str, metric: str) -> float:
    y, pred = labels_and_preds(table, source)
    return sk_metric(y, pred, metric, np.unique(y))


def test_reductions_and_gains_match_sklearn_and_a_naive_bootstrap(tables: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    reference, other = tables
    result = paired_comparison(reference, other, "ham", N_RESAMPLES, 0, 0.95)
    assert list(result["gap_reduction"]) == ["ham - isic", "ham - clinic"]
    assert list(result["macro_f1_gain"]) == ["isic", "clinic"]
    ham = {m: naive_metric_draws(reference, other, "ham", m) for m in ("macro_f1", "accuracy")}
    for source in ("isic", "clinic"):
        for metric in ("macro_f1", "accuracy"):
            gap_ref = sk_point(reference, "ham", metric) - sk_point(reference, source, metric)
            gap_oth = sk_point(other, "ham", metric) - sk_point(other, source, metric)
            entry = result["gap_reduction"][f"ham - {source}"][metric]
            assert entry["value"] == pytest.approx(gap_ref - gap_oth, abs=1e-12)
            assert entry["relative"] == pytest.approx(100 * (gap_ref - gap_oth) / gap_ref, abs=1e-9)
            draws = ham[metric] - naive_metric_draws(reference, other, source, metric)  # per-run gap per resample
            low, high = np.percentile(draws[:, 0] - draws[:, 1], [2.5, 97.5])
            assert (entry["ci_low"], entry["ci_high"]) == pytest.approx((low, high), abs=1e-12)
        gain = result["macro_f1_gain"][source]
        draws = naive_metric_draws(reference, other, source, "macro_f1")
        assert gain["value"] == pytest.approx(
            sk_point(other, source, "macro_f1") - sk_point(reference, source, "macro_f1"), abs=1e-12
        )
        low, high = np.percentile(draws[:, 1] - draws[:, 0], [2.5, 97.5])
        assert (gain["ci_low"], gain["ci_high"]) == pytest.approx((low, high), abs=1e-12)
        assert gain["ci_low"] < gain["value"] < gain["ci_high"]


def test_identical_tables_differ_by_exactly_zero(tables: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    reference, _ = tables
    result = paired_comparison(reference, reference.iloc[::-1], "ham", N_RESAMPLES, 0)
    entries = [*result["macro_f1_gain"].values()]
    entries += [e for pair in result["gap_reduction"].values() for e in pair.values()]
    assert len(entries) == 2 + 2 * 2
    assert all((e["value"], e["ci_low"], e["ci_high"]) == (0.0, 0.0, 0.0) for e in entries)


def test_reference_source_and_shared_sources(tables: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    reference, other = tables
    without_clinic = other[other["source"] != "clinic"]
    result = paired_comparison(reference, without_clinic, "ham", N_RESAMPLES, 0)
    assert list(result["gap_reduction"]) == ["ham - isic"] and list(result["macro_f1_gain"]) == ["isic"]
    no_ham = paired_comparison(reference, other[other["source"] != "ham"], "ham", N_RESAMPLES, 0)
    assert no_ham["gap_reduction"] == {} and list(no_ham["macro_f1_gain"]) == ["isic", "clinic"]
    from_isic = paired_comparison(reference, other, "isic", N_RESAMPLES, 0)
    assert list(from_isic["gap_reduction"]) == ["isic - ham", "isic - clinic"]
    assert list(from_isic["macro_f1_gain"]) == ["ham", "clinic"]


def test_zero_reference_gap_has_no_relative(tables: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    _, other = tables
    perfect = other.copy()
    perfect[list(CLASSES)] = np.eye(K)[perfect["label"].map(CLASSES.index)]
    entry = paired_comparison(perfect, other, "ham", N_RESAMPLES, 0)["gap_reduction"]["ham - isic"]["accuracy"]
    assert entry["relative"] is None
    assert entry["value"] == pytest.approx(-(sk_point(other, "ham", "accuracy") - sk_point(other, "isic", "accuracy")))


def test_different_images_or_labels_fail(tables: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    reference, other = tables
    names = ("run A", "run B")
    dropped = other[~other["image_id"].isin(["isic_0003", "isic_0009"])]
    with pytest.raises(CrossdermError) as error:
        paired_comparison(reference, dropped, "ham", N_RESAMPLES, 0, names=names)
    message = str(error.value)
    assert "\n" not in message and "run A and run B predict different isic images" in message
    assert "2 only in the first, 0 only in the second" in message and "'isic_0003'" in message

    relabelled = other.copy()
    row = relabelled.index[relabelled["image_id"] == "clinic_0007"][0]
    old = relabelled.at[row, "label"]
    relabelled.at[row, "label"] = next(c for c in CLASSES if c != old)
    with pytest.raises(CrossdermError, match=f"disagree on the label of clinic image 'clinic_0007' \\('{old}' vs"):
        paired_comparison(reference, relabelled, "ham", N_RESAMPLES, 0, names=names)

    doubled = pd.concat([other, other.iloc[[0]]], ignore_index=True)
    with pytest.raises(CrossdermError, match=f"run B lists {other['source'].iat[0]} image .* more than once"):
        paired_comparison(reference, doubled, "ham", N_RESAMPLES, 0, names=names)
