"""Benchmark: the vectorised bootstrap of ``crossderm evaluate`` against a naive scikit-learn loop.

Data: 25,000 synthetic predictions of the 7 classes in 2 sources (10,000 ham + 15,000 isic, HAM10000-like
class mix), 2,000 resamples. The naive loop (the same metrics through scikit-learn, one resample at a time)
would take minutes, so it is timed on fewer resamples (50 quick, 200 full) and extrapolated per resample.
Run as ``python benchmarks/bench_bootstrap.py [--quick]`` with the package importable.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from crossderm.cli import main
from crossderm.evaluate.metrics import bootstrap_auc, bootstrap_confusions, metrics_from_confusion
from crossderm.evaluate.predictions import compute_metrics
from crossderm.labels import CLASSES

N_RESAMPLES = 2000
SOURCES = {"ham": 10_000, "isic": 15_000}
PRIORS = np.array([327, 514, 1099, 115, 1113, 6705, 142]) / 10015


def make_predictions(seed: int = 0) -> pd.DataFrame:
    """A predictions table shaped like ``crossderm predict`` output, with a moderately skilled classifier."""
    rng = np.random.default_rng(seed)
    frames = []
    for source, n in SOURCES.items():
        y = rng.choice(len(CLASSES), size=n, p=PRIORS)
        logits = rng.normal(size=(n, len(CLASSES)))
        logits[np.arange(n), y] += 1.5
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        frame = pd.DataFrame(probs, columns=list(CLASSES))
        frame.insert(0, "image_id", [f"{source}_{i:06d}" for i in range(n)])
        frame.insert(1, "source", source)
        frame.insert(2, "label", [CLASSES[c] for c in y])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _arrays(table: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (rows["label"].map(CLASSES.index).to_numpy(), rows[list(CLASSES)].to_numpy())
        for _, rows in table.groupby("source", sort=False)
    ]


def _best_of(repeats: int, work: Any) -> float:
    """Fastest of ``repeats`` timings: the least disturbed by other load."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def time_ours(table: pd.DataFrame, repeats: int) -> dict[str, float]:
    """Full metric computation, and its confusion-matrix and AUC parts alone, for all sources."""
    sources = _arrays(table)

    def confusion_part() -> None:
        rng = np.random.default_rng(0)
        for y, scores in sources:
            present = np.bincount(y, minlength=len(CLASSES)) > 0
            cms = bootstrap_confusions(y, [scores.argmax(axis=1)], len(CLASSES), N_RESAMPLES, rng)
            metrics_from_confusion(cms[:, 0], present)

    def auc_part() -> None:
        rng = np.random.default_rng(0)
        for y, scores in sources:
            bootstrap_auc(y, scores, N_RESAMPLES, rng)

    return {
        "ours_s": _best_of(repeats, lambda: compute_metrics(table, N_RESAMPLES, 0)),
        "ours_confusion_s": _best_of(repeats, confusion_part),
        "ours_auc_s": _best_of(repeats, auc_part),
    }


def time_end_to_end(table: pd.DataFrame) -> float:
    """``crossderm evaluate`` as a user runs it: read and validate the CSV, compute, write both files."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pred.csv"
        table.to_csv(path, index=False)
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            code = main(["evaluate", "--predictions", str(path), "--out", str(Path(tmp) / "eval")])
        elapsed = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"crossderm evaluate exited with {code}")
    return elapsed


def time_naive(table: pd.DataFrame, n_resamples: int) -> dict[str, float]:
    """Seconds per resample (all sources) of the same metrics through scikit-learn, AUC timed apart."""
    rng = np.random.default_rng(0)
    confusion_s = auc_s = 0.0
    for y, scores in _arrays(table):
        present = np.unique(y)
        for _ in range(n_resamples):
            idx = rng.integers(0, y.size, size=y.size)
            yb, sb = y[idx], scores[idx]
            start = time.perf_counter()
            pb = sb.argmax(axis=1)
            f1_score(yb, pb, labels=present, average="macro", zero_division=0)
            precision_recall_fscore_support(yb, pb, labels=present, average=None, zero_division=0)
            accuracy_score(yb, pb)
            balanced_accuracy_score(yb, pb)
            middle = time.perf_counter()
            for c in present:
                roc_auc_score(yb == c, sb[:, c])
            confusion_s += middle - start
            auc_s += time.perf_counter() - middle
    return {
        "naive_confusion_s_per_resample": confusion_s / n_resamples,
        "naive_auc_s_per_resample": auc_s / n_resamples,
    }


def run(quick: bool) -> dict[str, Any]:
    """Measure both; ``ratio`` is the extrapolated naive time over ours for the same 2,000 resamples."""
    table = make_predictions()
    naive_resamples = 50 if quick else 200
    compute_metrics(table.head(500), 10, 0)  # warm imports and caches before timing
    result: dict[str, Any] = {
        "name": "bootstrap",
        "n_predictions": len(table),
        "n_sources": len(SOURCES),
        "n_classes": len(CLASSES),
        "n_resamples": N_RESAMPLES,
        **time_ours(table, repeats=1 if quick else 3),
        "ours_end_to_end_s": time_end_to_end(table),
        "naive_resamples_timed": naive_resamples,
        **time_naive(table, naive_resamples),
    }
    naive_per_resample = result["naive_confusion_s_per_resample"] + result["naive_auc_s_per_resample"]
    result["naive_s_per_resample"] = naive_per_resample
    result["naive_extrapolated_s"] = naive_per_resample * N_RESAMPLES
    result["ours_resamples_per_s"] = N_RESAMPLES / result["ours_s"]
    result["naive_resamples_per_s"] = 1 / naive_per_resample
    result["ratio_confusion_only"] = (
        result["naive_confusion_s_per_resample"] * N_RESAMPLES / result["ours_confusion_s"]
    )
    result["ratio_auc_only"] = result["naive_auc_s_per_resample"] * N_RESAMPLES / result["ours_auc_s"]
    result["ratio"] = result["naive_extrapolated_s"] / result["ours_s"]
    return result


def describe(result: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"bootstrap: {result['n_predictions']:,} predictions ({result['n_sources']} sources, "
            f"{result['n_classes']} classes), {result['n_resamples']:,} resamples",
            f"  ours : {result['ours_s']:.3f} s for all metrics with CIs "
            f"(confusion-matrix metrics {result['ours_confusion_s']:.3f} s, "
            f"AUC {result['ours_auc_s']:.3f} s); "
            f"{result['ours_resamples_per_s']:,.0f} resamples/s",
            f"         {result['ours_end_to_end_s']:.3f} s end to end (read + validate CSV, compute, write)",
            f"  naive: {1000 * result['naive_s_per_resample']:.1f} ms per resample "
            f"(AUC {1000 * result['naive_auc_s_per_resample']:.1f} ms), timed on "
            f"{result['naive_resamples_timed']} resamples and extrapolated to {result['n_resamples']:,}: "
            f"{result['naive_extrapolated_s']:.1f} s",
            f"  speed-up: {result['ratio']:.0f}x overall "
            f"(confusion metrics {result['ratio_confusion_only']:.0f}x, "
            f"AUC {result['ratio_auc_only']:.0f}x)",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="time the naive loop on 50 resamples, not 200")
    print(describe(run(parser.parse_args().quick)))
