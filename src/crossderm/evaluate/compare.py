"""Paired comparison of two prediction tables of the same images: gap reduction and per-source gain.

Two runs that predict the same images share each image's difficulty, so a CI of their *difference* must
resample the same images for both: per source one multinomial over the joint (true, pred_ref, pred_other)
cells (:func:`~crossderm.evaluate.metrics.bootstrap_confusions`). Resampling the runs independently would
count the shared difficulty twice and inflate the interval. Sources are resampled independently, each
with its own generator (:func:`~crossderm.evaluate.predictions.source_rng`), as ``crossderm evaluate`` does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from crossderm.defaults import BOOTSTRAP_SEED, CI_LEVEL, N_BOOTSTRAP, REFERENCE_SOURCE
from crossderm.errors import CrossdermError
from crossderm.evaluate.metrics import (
    bootstrap_confusions,
    confusion_matrix,
    gap_name,
    interval,
    metrics_from_confusion,
)
from crossderm.evaluate.predictions import source_rng
from crossderm.labels import CLASSES, label_indices

# The metrics whose gap reduction is reported (balanced accuracy's gap is in metrics.json, not compared).
COMPARISON_METRICS: tuple[str, ...] = ("macro_f1", "accuracy")
GAIN_METRIC = "macro_f1"


def paired_labels(
    reference_preds: pd.DataFrame, other_preds: pd.DataFrame, source: str, names: tuple[str, str]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Ground truth and both tables' argmax predictions of one source's images, sorted by image_id.

    The two tables must hold exactly the same images with the same labels; anything else is a one-line
    error naming the source, the tables (``names``) and an example image.
    """
    columns = ["image_id", "label", *CLASSES]
    tables = [preds.loc[preds["source"] == source, columns] for preds in (reference_preds, other_preds)]
    for name, table in zip(names, tables, strict=True):
        repeated = table["image_id"][table["image_id"].duplicated()]
        if not repeated.empty:
            raise CrossdermError(f"{name} lists {source} image {repeated.iat[0]!r} more than once")
    ref_ids, oth_ids = (set(table["image_id"]) for table in tables)
    only_ref, only_oth = sorted(ref_ids - oth_ids), sorted(oth_ids - ref_ids)
    if only_ref or only_oth:
        raise CrossdermError(
            f"{names[0]} and {names[1]} predict different {source} images ({len(only_ref)} only in the first, "
            f"{len(only_oth)} only in the second, e.g. {(only_ref or only_oth)[0]!r}); "
            "the paired comparison needs the same images in both"
        )
    joint = tables[0].merge(tables[1], on="image_id", suffixes=("_ref", "_oth")).sort_values("image_id", kind="stable")
    differ = joint["label_ref"] != joint["label_oth"]
    if differ.any():
        row = joint.loc[differ.idxmax()]
        raise CrossdermError(
            f"{names[0]} and {names[1]} disagree on the label of {source} image {row['image_id']!r} "
            f"({row['label_ref']!r} vs {row['label_oth']!r})"
        )
    y = label_indices(joint["label_ref"])
    preds = [joint[[f"{c}{suffix}" for c in CLASSES]].to_numpy().argmax(axis=1) for suffix in ("_ref", "_oth")]
    return y, preds


def paired_draws(
    first: pd.DataFrame, second: pd.DataFrame, source: str, names: tuple[str, str], n_resamples: int, seed: int
) -> tuple[int, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Images, point values (2,) and paired resamples (B, 2) per metric of both tables on one ``source``
    (index 0 = ``first``); resampled with ``source_rng(seed, source)`` as ``crossderm evaluate`` does."""
    k = len(CLASSES)
    y, preds = paired_labels(first, second, source, names)
    present = np.bincount(y, minlength=k) > 0
    points = metrics_from_confusion(np.stack([confusion_matrix(y, p, k) for p in preds]), present)
    draws = metrics_from_confusion(bootstrap_confusions(y, preds, k, n_resamples, source_rng(seed, source)), present)
    return int(y.size), points, draws


def paired_comparison(
    reference_preds: pd.DataFrame,
    other_preds: pd.DataFrame,
    reference_source: str = REFERENCE_SOURCE,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
    ci: float = CI_LEVEL,
    names: tuple[str, str] = ("the reference predictions", "the other predictions"),
) -> dict[str, Any]:
    """Other run against the reference run, on the sources both tables have (reference's order).

    ``gap_reduction``: per pair ``"ref - other_source"``, (gap of the reference run) - (gap of the other
    run) per comparison metric with a paired CI, and ``relative`` = that in % of the reference run's gap
    (None if it is 0); only when ``reference_source`` is a shared source. ``macro_f1_gain``: per
    non-reference source, other run - reference run. Each table has image_id, source, label and one
    probability column per class; ``names`` name the tables in error messages.
    """
    other_sources = set(other_preds["source"])
    sources = [s for s in pd.unique(reference_preds["source"]) if s in other_sources]
    points: dict[str, dict[str, np.ndarray]] = {}
    draws: dict[str, dict[str, np.ndarray]] = {}
    for source in sources:
        _, points[source], draws[source] = paired_draws(reference_preds, other_preds, source, names, n_resamples, seed)
    reductions: dict[str, dict[str, Any]] = {}
    if reference_source in points:
        for other in (s for s in sources if s != reference_source):
            reductions[gap_name(reference_source, other)] = {
                metric: _reduction(points, draws, reference_source, other, metric, ci) for metric in COMPARISON_METRICS
            }
    gains = {
        source: interval(
            float(points[source][GAIN_METRIC][1] - points[source][GAIN_METRIC][0]),
            draws[source][GAIN_METRIC][:, 1] - draws[source][GAIN_METRIC][:, 0],
            ci,
        )
        for source in sources
        if source != reference_source
    }
    return {"gap_reduction": reductions, "macro_f1_gain": gains}


def _reduction(
    points: dict[str, dict[str, np.ndarray]],
    draws: dict[str, dict[str, np.ndarray]],
    reference: str,
    other: str,
    metric: str,
    ci: float,
) -> dict[str, Any]:
    """gap_ref_run - gap_other_run of one pair and metric; index 0 = reference run, 1 = other run."""
    gap_point = points[reference][metric] - points[other][metric]
    gap_draws = draws[reference][metric] - draws[other][metric]
    reduction = float(gap_point[0] - gap_point[1])
    entry: dict[str, Any] = interval(reduction, gap_draws[:, 0] - gap_draws[:, 1], ci)
    entry["relative"] = 100 * reduction / float(gap_point[0]) if gap_point[0] != 0 else None
    return entry
