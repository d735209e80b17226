"""Classification metrics with percentile-bootstrap confidence intervals, vectorised over resamples.

A loop of 2,000 resamples x scikit-learn calls takes minutes; here every resample is drawn at once and
every metric is computed for all resamples in array operations.

* Confusion-matrix metrics: resampling n images uniformly with replacement makes the confusion matrix
  Multinomial(n, cell_counts / n) over the (true, predicted) cells, so one ``rng.multinomial`` call gives
  all B confusion matrices exactly (:func:`bootstrap_confusions`, :func:`metrics_from_confusion`).
* ROC AUC needs the scores, so each resample gets per-image counts (``bincount`` of n uniform draws) and a
  sparse matrix maps those counts to the few sums a weighted Mann-Whitney AUC needs
  (:func:`bootstrap_auc`); one sparse product per chunk of resamples serves all classes.

Every metric of a resample equals scikit-learn's on the resampled images (``zero_division=0``), so the
point values equal scikit-learn's on the original images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse

from crossderm.defaults import CI_LEVEL

# The headline metrics of every table (key -> label); each source-to-source gap is computed for all of them.
HEADLINE_METRICS: dict[str, str] = {
    "macro_f1": "macro-F1",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
}
GAP_METRICS: tuple[str, ...] = tuple(HEADLINE_METRICS)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class (scikit-learn's layout)."""
    flat = np.asarray(y_true, dtype=np.int64) * n_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def bootstrap_confusions(
    y_true: np.ndarray,
    preds: Sequence[np.ndarray],
    n_classes: int,
    n_resamples: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Confusion matrices of ``n_resamples`` image resamples, shape (B, E, K, K), drawn exactly.

    The multinomial runs over the joint cells (true, pred_1, ..., pred_E), so the E prediction sets of the
    same images are resampled *paired*: resample b holds the same images for every set, which is what a
    CI of a difference between experiments needs.
    """
    y = np.asarray(y_true, dtype=np.int64)
    columns = [y, *(np.asarray(p, dtype=np.int64) for p in preds)]
    if any(c.shape != y.shape for c in columns) or y.ndim != 1 or y.size == 0:
        raise ValueError("y_true and every prediction set must be equal-length, non-empty 1-D arrays")
    if any(c.min() < 0 or c.max() >= n_classes for c in columns):
        raise ValueError(f"labels must lie in [0, {n_classes})")
    cells, counts = np.unique(np.column_stack(columns), axis=0, return_counts=True)
    draws = rng.multinomial(y.size, counts / y.size, size=n_resamples)
    out = np.empty((n_resamples, len(columns) - 1, n_classes * n_classes), dtype=np.int64)
    for e in range(len(columns) - 1):
        onehot = np.zeros((len(cells), n_classes * n_classes), dtype=np.int64)
        onehot[np.arange(len(cells)), cells[:, 0] * n_classes + cells[:, e + 1]] = 1
        out[:, e] = draws @ onehot
    return out.reshape(n_resamples, len(columns) - 1, n_classes, n_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (scikit-learn's ``zero_division=0``)."""
    num, den = np.broadcast_arrays(np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64))
    return np.divide(num, den, out=np.zeros(num.shape), where=den != 0)


def metrics_from_confusion(cm: np.ndarray, present: np.ndarray) -> dict[str, np.ndarray]:
    """Macro-F1, accuracy, balanced accuracy and per-class F1/precision/recall of confusion matrices.

    Vectorised over leading dims: ``cm`` is (..., K, K); scalars come back as (...), per-class as (..., K).
    Macro-F1 averages over the classes in ``present`` (those in the evaluated set's ground truth, fixed for
    all resamples, as ``f1_score(labels=present, average="macro")``); balanced accuracy averages recall over
    the classes that occur in each matrix's own ground truth, as ``balanced_accuracy_score`` does.
    """
    cm = np.asarray(cm)
    present = np.asarray(present, dtype=bool)
    if not present.any():
        raise ValueError("no class is present")
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support = cm.sum(axis=-1)
    predicted = cm.sum(axis=-2)
    recall = _ratio(tp, support)
    f1 = _ratio(2 * tp, support + predicted)
    occurs = support > 0
    return {
        "macro_f1": f1[..., present].mean(axis=-1),
        "accuracy": _ratio(tp.sum(axis=-1), support.sum(axis=-1)),
        "balanced_accuracy": _ratio((recall * occurs).sum(axis=-1), occurs.sum(axis=-1)),
        "f1": f1,
        "precision": _ratio(tp, predicted),
        "recall": recall,
    }


class _AucPlan:
    """Sparse linear map from per-image weights to the sums a weighted one-vs-rest AUC needs.

    For class k, with weights w: AUC = sum over positive i, negative j of w_i w_j [s_j < s_i] (ties 1/2),
    divided by W_pos W_neg. Sorting once by score, the negatives below a positive form prefix sums over
    "segments" (negatives between consecutive distinct positive scores), so per resample only
    segment sums D, positive sums P over the same segments, tied sums and W_pos are needed:
    numerator = P . cumsum(D) + 1/2 (tied positives . tied negatives). All are rows of one sparse matrix.
    """

    def __init__(self, y_true: np.ndarray, scores: np.ndarray) -> None:
        n, k = scores.shape
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        self.blocks: list[tuple[slice, slice, slice, slice, int]] = []
        start = 0

        def add(images: np.ndarray, row_of_image: np.ndarray, n_rows: int) -> slice:
            nonlocal start
            rows.append(start + row_of_image)
            cols.append(images)
            block = slice(start, start + n_rows)
            start += n_rows
            return block

        for c in range(k):
            s = scores[:, c]
            pos = np.flatnonzero(y_true == c)
            neg = np.flatnonzero(y_true != c)
            levels = np.unique(s[pos])
            above = np.searchsorted(levels, s[neg], side="right")  # first positive level strictly above
            tied = np.zeros(neg.size, dtype=bool)
            if levels.size:
                tied = (above > 0) & (levels[np.maximum(above - 1, 0)] == s[neg])
            below_some = above < levels.size
            segments, seg_of_neg = np.unique(above[below_some], return_inverse=True)
            level_of_pos = np.searchsorted(levels, s[pos])
            seg_of_pos = np.searchsorted(segments, level_of_pos, side="right") - 1
            has_seg = seg_of_pos >= 0
            tie_levels, tie_of_neg = np.unique(above[tied] - 1, return_inverse=True)
            tie_of_pos = np.searchsorted(tie_levels, level_of_pos)
            pos_tied = tie_of_pos < tie_levels.size
            pos_tied[pos_tied] = tie_levels[tie_of_pos[pos_tied]] == level_of_pos[pos_tied]
            d = add(neg[below_some], seg_of_neg, segments.size)
            p = add(pos[has_seg], seg_of_pos[has_seg], segments.size)
            tn = add(neg[tied], tie_of_neg, tie_levels.size)
            tp = add(pos[pos_tied], tie_of_pos[pos_tied], tie_levels.size)
            w_pos = add(pos, np.zeros(pos.size, dtype=np.int64), 1)
            self.blocks.append((d, p, tn, tp, w_pos.start))
        self.total_row = add(np.arange(n), np.zeros(n, dtype=np.int64), 1).start
        row_idx = np.concatenate(rows)
        self.matrix = scipy.sparse.csr_matrix(
            (np.ones(row_idx.size, dtype=np.int32), (row_idx, np.concatenate(cols))), shape=(start, n)
        )

    def auc(self, weights: np.ndarray) -> np.ndarray:
        """AUC per class for each weight column, (n, c) -> (c, K); NaN without positive or negative weight.

        Integer weights (bootstrap counts) are summed in int64, exactly; the tie half is kept exact by
        doubling numerator and denominator.
        """
        exact = np.issubdtype(weights.dtype, np.integer)
        sums = (self.matrix.astype(weights.dtype, copy=False) @ weights).astype(
            np.int64 if exact else np.float64, copy=False
        )
        total = sums[self.total_row]
        out = np.empty((weights.shape[1], len(self.blocks)))
        for c, (d, p, tn, tp, w_pos) in enumerate(self.blocks):
            numerator = 2 * np.einsum("qc,qc->c", sums[p], np.cumsum(sums[d], axis=0))
            numerator += np.einsum("qc,qc->c", sums[tp], sums[tn])
            denominator = 2 * sums[w_pos] * (total - sums[w_pos])
            out[:, c] = np.divide(
                numerator, denominator, out=np.full(total.shape, np.nan), where=denominator > 0
            )
        return out


def ovr_auc(y_true: np.ndarray, scores: np.ndarray, sample_weight: np.ndarray | None = None) -> np.ndarray:
    """One-vs-rest ROC AUC per class (K,), equal to ``roc_auc_score(y == k, scores[:, k], sample_weight)``.

    NaN for a class without positive or without negative weight, where scikit-learn raises.
    """
    scores = np.asarray(scores, dtype=np.float64)
    weights = np.ones(scores.shape[0], dtype=np.int64) if sample_weight is None else np.asarray(sample_weight)
    if not np.issubdtype(weights.dtype, np.integer):
        weights = weights.astype(np.float64)
    return _AucPlan(np.asarray(y_true), scores).auc(weights[:, None])[0]


def bootstrap_auc(
    y_true: np.ndarray,
    scores: np.ndarray,
    n_resamples: int,
    rng: np.random.Generator,
    chunk_size: int = 32,
) -> np.ndarray:
    """One-vs-rest AUC per class for ``n_resamples`` image resamples, shape (B, K), NaN where undefined.

    Each resample is n uniform draws with replacement turned into per-image counts; chunks bound memory to
    a few ``n * chunk_size`` arrays.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.shape[0]
    plan = _AucPlan(np.asarray(y_true), scores)
    out = np.empty((n_resamples, scores.shape[1]))
    for begin in range(0, n_resamples, chunk_size):
        size = min(chunk_size, n_resamples - begin)
        counts = np.empty((size, n), dtype=np.int32)
        for b in range(size):
            counts[b] = np.bincount(rng.integers(0, n, size=n), minlength=n)
        out[begin : begin + size] = plan.auc(np.ascontiguousarray(counts.T))
    return out


def macro_of_present(values: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Mean over the present classes (last axis) of the values that are defined (not NaN); NaN if none."""
    chosen = np.asarray(values)[..., np.asarray(present, dtype=bool)]
    defined = ~np.isnan(chosen)
    return np.divide(
        np.where(defined, chosen, 0.0).sum(axis=-1),
        defined.sum(axis=-1),
        out=np.full(chosen.shape[:-1], np.nan),
        where=defined.any(axis=-1),
    )


def interval(value: float, samples: np.ndarray, level: float = CI_LEVEL) -> dict[str, float | None]:
    """``{"value", "ci_low", "ci_high"}``, the CI from the defined (non-NaN) resamples; None if undefined."""
    finite = samples[~np.isnan(samples)]
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(finite, [tail, 100 - tail]) if finite.size else (np.nan, np.nan)
    values = {"value": value, "ci_low": low, "ci_high": high}
    return {key: None if np.isnan(x) else float(x) for key, x in values.items()}


@dataclass(frozen=True)
class SourceEvaluation:
    """One source's metrics: ``summary`` is JSON-ready; ``points``/``resamples`` feed the gap."""

    summary: dict[str, Any]
    points: dict[str, float] = field(repr=False)
    resamples: dict[str, np.ndarray] = field(repr=False)


def evaluate_source(
    y_true: np.ndarray,
    scores: np.ndarray,
    class_names: Sequence[str],
    n_resamples: int,
    rng: np.random.Generator,
    auc_ci: bool = True,
) -> SourceEvaluation:
    """All metrics of one source with bootstrap CIs; prediction = argmax of ``scores`` (n, K).

    Per-class entries of classes absent from the ground truth are None; macro averages skip them.
    ``auc_ci=False`` skips the AUC bootstrap (most of the cost): AUC point values only, their CIs None. The
    confusion-matrix resamples are drawn first from ``rng``, so they are the same either way.
    """
    y = np.asarray(y_true, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    k = len(class_names)
    pred = scores.argmax(axis=1)
    present = np.bincount(y, minlength=k) > 0
    cm = confusion_matrix(y, pred, k)
    point = metrics_from_confusion(cm, present)
    boot = metrics_from_confusion(bootstrap_confusions(y, [pred], k, n_resamples, rng)[:, 0], present)
    auc_point = ovr_auc(y, scores)
    auc_boot = bootstrap_auc(y, scores, n_resamples, rng) if auc_ci else np.full((n_resamples, k), np.nan)
    point["macro_auc"] = macro_of_present(auc_point, present)
    boot["macro_auc"] = macro_of_present(auc_boot, present)
    point["auc"], boot["auc"] = auc_point, auc_boot

    per_class: dict[str, dict[str, Any] | None] = {}
    for c, name in enumerate(class_names):
        if not present[c]:
            per_class[name] = None
            continue
        entry: dict[str, Any] = {
            m: interval(point[m][c], boot[m][:, c]) for m in ("f1", "precision", "recall", "auc")
        }
        entry["support"] = int(cm[c].sum())
        per_class[name] = entry
    summary: dict[str, Any] = {
        "n": int(y.size),
        "classes_present": [name for name, here in zip(class_names, present, strict=True) if here],
        **{
            m: interval(float(point[m]), boot[m])
            for m in ("macro_f1", "accuracy", "balanced_accuracy", "macro_auc")
        },
        "per_class": per_class,
        "per_class_f1": {name: None if entry is None else entry["f1"] for name, entry in per_class.items()},
        "confusion_matrix": cm.tolist(),
    }
    return SourceEvaluation(
        summary=summary,
        points={m: float(point[m]) for m in GAP_METRICS},
        resamples={m: boot[m] for m in GAP_METRICS},
    )


def gap_name(reference: str, other: str) -> str:
    """The key of a gap in metrics.json and the report: ``"ham - isic"``."""
    return f"{reference} - {other}"


def generalisation_gap(
    reference: SourceEvaluation, other: SourceEvaluation
) -> dict[str, dict[str, float | None]]:
    """reference - other per gap metric; the sources are resampled independently, so the draws just subtract."""
    return {
        m: interval(reference.points[m] - other.points[m], reference.resamples[m] - other.resamples[m])
        for m in GAP_METRICS
    }
