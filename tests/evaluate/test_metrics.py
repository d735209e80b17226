"""The vectorised metrics and bootstrap against scikit-learn, the ISIC challenge scorer and a naive loop."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from crossderm.evaluate.metrics import (
    bootstrap_auc,
    bootstrap_confusions,
    confusion_matrix,
    evaluate_source,
    generalisation_gap,
    metrics_from_confusion,
    ovr_auc,
)
from crossderm.labels import CLASSES

K = len(CLASSES)
HAM_PRIORS = np.array([327, 514, 1099, 115, 1113, 6705, 142]) / 10015


def make_predictions(
    rng: np.random.Generator, n: int, priors: np.ndarray, skill: float = 1.0, bias: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from ``priors`` and softmax scores that favour the true class by ``skill``."""
    y = rng.choice(K, size=n, p=priors / priors.sum())
    logits = rng.normal(size=(n, K))
    logits[np.arange(n), y] += skill
    if bias is not None:
        logits += bias
    scores = np.exp(logits)
    return y, scores / scores.sum(axis=1, keepdims=True)


def check_against_sklearn(y: np.ndarray, scores: np.ndarray) -> None:
    summary = evaluate_source(y, scores, CLASSES, 20, np.random.default_rng(0)).summary
    pred = scores.argmax(axis=1)
    present = np.unique(y)
    assert summary["classes_present"] == [CLASSES[c] for c in present]
    assert summary["n"] == y.size
    assert summary["macro_f1"]["value"] == pytest.approx(
        f1_score(y, pred, labels=present, average="macro", zero_division=0), abs=1e-12
    )
    assert summary["accuracy"]["value"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert summary["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    precision, recall, f1, support = precision_recall_fscore_support(
        y, pred, labels=range(K), average=None, zero_division=0
    )
    aucs = []
    for c, name in enumerate(CLASSES):
        entry = summary["per_class"][name]
        if c not in present:
            assert entry is None and summary["per_class_f1"][name] is None
            continue
        auc = roc_auc_score(y == c, scores[:, c])
        aucs.append(auc)
        assert entry["support"] == support[c]
        for key, expected in (
            ("f1", f1[c]),
            ("precision", precision[c]),
            ("recall", recall[c]),
            ("auc", auc),
        ):
            assert entry[key]["value"] == pytest.approx(expected, abs=1e-12), (name, key)
        assert summary["per_class_f1"][name] == entry["f1"]
    assert summary["macro_auc"]["value"] == pytest.approx(np.mean(aucs), abs=1e-12)
    np.testing.assert_array_equal(summary["confusion_matrix"], sk_confusion_matrix(y, pred, labels=range(K)))


def test_point_values_equal_sklearn_on_random_predictions() -> None:
    rng = np.random.default_rng(1)
    check_against_sklearn(*make_predictions(rng, 3000, HAM_PRIORS, skill=1.5))


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_point_values_equal_sklearn_on_skewed_predictions_with_an_absent_class() -> None:
    rng = np.random.default_rng(2)
    priors = HAM_PRIORS.copy()
    priors[CLASSES.index("df")] = 0
    bias = np.zeros(K)
    bias[CLASSES.index("nv")] = 2.0  # most images predicted nv
    bias[CLASSES.index("vasc")] = -10.0  # vasc present but never predicted: precision 0/0 -> 0
    bias[CLASSES.index("df")] = 0.5  # df absent but still predicted: must not enter the macro average
    y, scores = make_predictions(rng, 2000, priors, skill=1.0, bias=bias)
    pred = scores.argmax(axis=1)
    assert CLASSES.index("df") not in y and CLASSES.index("df") in pred
    assert CLASSES.index("vasc") in y and CLASSES.index("vasc") not in pred
    check_against_sklearn(y, scores)


def test_auc_with_ties_and_weights_equals_sklearn() -> None:
    rng = np.random.default_rng(3)
    y, scores = make_predictions(rng, 1500, HAM_PRIORS)
    scores = np.round(scores, 1)  # heavy ties, including ties between positives and negatives
    weights = rng.integers(0, 4, size=y.size).astype(float)
    for sample_weight in (None, weights):
        expected = [roc_auc_score(y == c, scores[:, c], sample_weight=sample_weight) for c in range(K)]
        np.testing.assert_allclose(ovr_auc(y, scores, sample_weight), expected, rtol=0, atol=1e-12)


def test_auc_is_nan_without_positives_or_negatives() -> None:
    scores = np.full((4, K), 1 / K)
    auc = ovr_auc(np.array([0, 0, 1, 1]), scores)
    assert np.isnan(auc[2:]).all() and not np.isnan(auc[:2]).any()
    assert np.isnan(ovr_auc(np.zeros(4, dtype=int), scores)).all()


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_metrics_of_each_resampled_confusion_equal_sklearn_on_those_images() -> None:
    rng = np.random.default_rng(4)
    cms = rng.integers(0, 4, size=(25, K, K)) * (rng.random((25, K, K)) < 0.5)
    cms[:, 3, :] = 0  # class df absent from the ground truth of every matrix
    cms[:5, 2, :] = 0  # bkl also absent from some resamples only
    present = np.ones(K, dtype=bool)
    present[3] = False
    got = metrics_from_confusion(cms, present)
    labels = np.flatnonzero(present)
    for b, cm in enumerate(cms):
        true, pred = np.nonzero(cm)
        y = np.repeat(true, cm[true, pred])
        p = np.repeat(pred, cm[true, pred])
        assert got["macro_f1"][b] == pytest.approx(
            f1_score(y, p, labels=labels, average="macro", zero_division=0)
        )
        assert got["accuracy"][b] == pytest.approx(accuracy_score(y, p))
        assert got["balanced_accuracy"][b] == pytest.approx(balanced_accuracy_score(y, p))
        precision, recall, f1, _ = precision_recall_fscore_support(
            y, p, labels=range(K), average=None, zero_division=0
        )
        np.testing.assert_allclose(got["precision"][b], precision)
        np.testing.assert_allclose(got["recall"][b], recall)
        np.testing.assert_allclose(got["f1"][b], f1)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
@pytest.mark.parametrize("bias_class", [None, "nv"])
def test_balanced_accuracy_equals_isic_challenge_scorer(bias_class: str | None) -> None:
    from isic_challenge_scoring import ClassificationMetric, ClassificationScore

    rng = np.random.default_rng(5)
    bias = np.zeros(K)
    if bias_class is not None:
        bias[CLASSES.index(bias_class)] = 2.0
    y, scores = make_predictions(rng, 2000, HAM_PRIORS, skill=1.2, bias=bias)
    images = [f"ISIC_{i:07d}" for i in range(y.size)]
    truth = pd.DataFrame(np.eye(K)[y], index=images, columns=list(CLASSES))
    predictions = pd.DataFrame(scores, index=images, columns=list(CLASSES))
    weights = pd.DataFrame({"score_weight": 1.0, "validation_weight": 1.0}, index=images)
    isic = ClassificationScore(truth, predictions, weights, ClassificationMetric.BALANCED_ACCURACY)
    ours = evaluate_source(y, scores, CLASSES, 10, np.random.default_rng(0)).summary
    assert ours["balanced_accuracy"]["value"] == pytest.approx(isic.overall, abs=1e-12)
    assert isic.overall == isic.aggregate["balanced_accuracy"]


def test_bootstrap_confusions_are_paired_and_unbiased() -> None:
    rng = np.random.default_rng(6)
    y, scores = make_predictions(rng, 500, HAM_PRIORS)
    pred_a = scores.argmax(axis=1)
    pred_b = rng.permutation(pred_a)  # a different prediction set on the same images
    cms = bootstrap_confusions(y, [pred_a, pred_b, pred_a], K, 4000, np.random.default_rng(0))
    assert cms.shape == (4000, 3, K, K) and cms.dtype == np.int64
    assert (cms.sum(axis=(-2, -1)) == y.size).all()
    # paired: the same resampled images, so identical truth counts and identical sets give identical matrices
    np.testing.assert_array_equal(cms[:, 0].sum(axis=-1), cms[:, 1].sum(axis=-1))
    np.testing.assert_array_equal(cms[:, 0], cms[:, 2])
    assert not np.array_equal(cms[:, 0], cms[:, 1])
    # Multinomial(n, counts / n) has mean = the observed matrix; 5 standard errors per cell
    for e, pred in enumerate((pred_a, pred_b)):
        observed = confusion_matrix(y, pred, K)
        stderr = np.sqrt(observed * (1 - observed / y.size) / cms.shape[0])
        assert (np.abs(cms[:, e].mean(axis=0) - observed) <= 5 * stderr + 1e-12).all()
    with pytest.raises(ValueError, match="labels must lie"):
        bootstrap_confusions(y, [pred_a + K], K, 10, rng)


def test_bootstrap_is_seeded_and_contains_the_point_value() -> None:
    rng = np.random.default_rng(7)
    y, scores = make_predictions(rng, 1000, HAM_PRIORS)
    first = evaluate_source(y, scores, CLASSES, 300, np.random.default_rng(11)).summary
    again = evaluate_source(y, scores, CLASSES, 300, np.random.default_rng(11)).summary
    other = evaluate_source(y, scores, CLASSES, 300, np.random.default_rng(12)).summary
    assert first == again
    assert first["macro_f1"] != other["macro_f1"] and first["macro_auc"] != other["macro_auc"]
    for key in ("macro_f1", "accuracy", "balanced_accuracy", "macro_auc"):
        assert first[key]["ci_low"] < first[key]["value"] < first[key]["ci_high"], key
    for entry in first["per_class"].values():
        for key in ("f1", "precision", "recall", "auc"):
            assert entry[key]["ci_low"] <= entry[key]["value"] <= entry[key]["ci_high"]


def test_bootstrap_percentiles_agree_with_a_naive_sklearn_loop() -> None:
    """Same estimator, different random draws: ours (2,000) vs 300 explicit resamples through scikit-learn.

    Monte-Carlo error of a 2.5 % / 97.5 % percentile from B resamples is about
    sd * sqrt(0.025 * 0.975 / B) / 0.058: 0.16 sd for B = 300, 0.06 sd for 2,000, so 0.17 sd for their
    difference. With 3,000 images of balanced classes the bootstrap sd of these metrics is below 0.01
    (asserted; CI width ~0.033), so that standard error is below 0.0017 and 0.005 is about 3 of them: chance
    passes, while a CI off by a fifth of its width (e.g. resampling n/2 images) fails.
    """
    rng = np.random.default_rng(8)
    y, scores = make_predictions(rng, 3000, np.ones(K), skill=1.5)
    present = np.unique(y)
    ours = evaluate_source(y, scores, CLASSES, 2000, np.random.default_rng(0)).summary
    draws = np.random.default_rng(1).integers(0, y.size, size=(300, y.size))
    naive: dict[str, list[float]] = {"macro_f1": [], "accuracy": [], "balanced_accuracy": [], "macro_auc": []}
    for idx in draws:
        yb, sb = y[idx], scores[idx]
        pb = sb.argmax(axis=1)
        naive["macro_f1"].append(f1_score(yb, pb, labels=present, average="macro", zero_division=0))
        naive["accuracy"].append(accuracy_score(yb, pb))
        naive["balanced_accuracy"].append(balanced_accuracy_score(yb, pb))
        naive["macro_auc"].append(np.mean([roc_auc_score(yb == c, sb[:, c]) for c in present]))
    for key, values in naive.items():
        low, high = np.percentile(values, [2.5, 97.5])
        assert np.std(values) < 0.01, key
        assert ours[key]["ci_low"] == pytest.approx(low, abs=0.005), key
        assert ours[key]["ci_high"] == pytest.approx(high, abs=0.005), key


def test_bootstrap_auc_resample_matches_its_weights() -> None:
    """Each bootstrap AUC is the weighted AUC of that resample's image counts (same generator stream)."""
    rng = np.random.default_rng(9)
    y, scores = make_predictions(rng, 400, HAM_PRIORS)
    got = bootstrap_auc(y, scores, 5, np.random.default_rng(3), chunk_size=2)
    replay = np.random.default_rng(3)
    for b in range(5):
        counts = np.bincount(replay.integers(0, y.size, size=y.size), minlength=y.size)
        expected = [
            roc_auc_score(y == c, scores[:, c], sample_weight=counts) if (counts * (y == c)).any() else np.nan
            for c in range(K)
        ]
        np.testing.assert_allclose(got[b], expected, rtol=0, atol=1e-12)


def test_generalisation_gap_is_the_difference_with_independent_draws() -> None:
    rng = np.random.default_rng(10)
    ham = evaluate_source(*make_predictions(rng, 1500, HAM_PRIORS, skill=2.0), CLASSES, 500, rng)
    isic = evaluate_source(*make_predictions(rng, 1500, HAM_PRIORS, skill=0.8), CLASSES, 500, rng)
    gap = generalisation_gap(ham, isic)
    assert set(gap) == {"macro_f1", "accuracy", "balanced_accuracy"}
    for key, entry in gap.items():
        assert entry["value"] == pytest.approx(ham.summary[key]["value"] - isic.summary[key]["value"])
        assert 0 < entry["ci_low"] < entry["value"] < entry["ci_high"]
        # independent sources: the gap's CI is wider than either source's own
        width = entry["ci_high"] - entry["ci_low"]
        assert width > ham.summary[key]["ci_high"] - ham.summary[key]["ci_low"]
        assert width > isic.summary[key]["ci_high"] - isic.summary[key]["ci_low"]
