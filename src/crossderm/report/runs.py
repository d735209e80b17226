"""Loading finished ``crossderm cv`` run folders for the report, refusing any that would mislead it.

The report copies each run's headline numbers from ``metrics.json`` and recomputes nothing per run, so it
first checks that ``metrics.json`` still describes ``oof_predictions.csv`` (same sources, image counts
and point values): a run re-pooled after its metrics were written would otherwise be reported stale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from crossderm.errors import CrossdermError
from crossderm.evaluate.groups import group_values
from crossderm.evaluate.metrics import HEADLINE_METRICS, confusion_matrix, metrics_from_confusion
from crossderm.evaluate.predictions import load_predictions
from crossderm.labels import CLASSES, label_indices
from crossderm.runfolder import RunFolder

# metrics.json must agree with oof_predictions.csv to this precision, or it is stale.
POINT_TOLERANCE = 1e-9
HISTORY_COLUMNS = ("epoch", "train_loss", "val_macro_f1")


@dataclass(frozen=True)
class Run:
    """What the report needs from one run folder."""

    run_dir: Path
    name: str
    description: str
    model: str
    parameters: int
    train_sources: list[str]
    sampler: str
    metrics: dict[str, Any]
    predictions: pd.DataFrame
    histories: dict[int, pd.DataFrame]
    calibration: dict[str, Any] | None = None

    @property
    def sources(self) -> list[str]:
        """The run's test sources, in metrics.json's order."""
        return list(self.metrics["sources"])


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CrossdermError(f"{path}: no such file (is this a `crossderm cv` run folder?)")
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CrossdermError(f"{path}: cannot read YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(config, dict):
        raise CrossdermError(f"{path}: expected a mapping of settings")
    missing = [key for key in ("name", "model", "train_sources", "sampler") if key not in config]
    if missing:
        raise CrossdermError(f"{path}: missing setting(s) {', '.join(missing)}")
    return config


def _read_histories(folder: RunFolder) -> dict[int, pd.DataFrame]:
    """Each fold's history.csv, by fold number; folds without one (not trained yet) are skipped."""
    histories: dict[int, pd.DataFrame] = {}
    for fold in folder.folds():
        if not fold.history.is_file():
            continue
        try:
            history = pd.read_csv(fold.history)
        except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise CrossdermError(f"{fold.history}: cannot read history ({' '.join(str(exc).split())})") from None
        missing = [c for c in HISTORY_COLUMNS if c not in history.columns]
        if missing:
            raise CrossdermError(f"{fold.history}: missing column(s) {', '.join(missing)}")
        histories[fold.fold] = history
    return histories


def _check_metrics(folder: RunFolder, metrics: dict[str, Any]) -> None:
    """metrics.json must have the sections the report reads (an older format has none of them)."""
    sources, bootstrap = metrics.get("sources"), metrics.get("bootstrap")
    if not isinstance(sources, dict) or not sources or not all(isinstance(s, dict) for s in sources.values()):
        raise CrossdermError(
            f"{folder.metrics}: no per-source 'sources' section (older format? rerun `crossderm pool {folder.path}`)"
        )
    if not isinstance(metrics.get("gaps"), dict) or not isinstance(metrics.get("reference_source"), str):
        raise CrossdermError(f"{folder.metrics}: no 'gaps' / 'reference_source' (rerun `crossderm pool {folder.path}`)")
    if not isinstance(bootstrap, dict) or not all(key in bootstrap for key in ("n_resamples", "seed", "ci")):
        raise CrossdermError(f"{folder.metrics}: 'bootstrap' must give n_resamples, seed and ci")


def _check_fresh(folder: RunFolder, metrics: dict[str, Any], predictions: pd.DataFrame) -> None:
    """Point values recomputed from the predictions must be metrics.json's, else metrics.json is stale."""
    hint = f"stale? rerun `crossderm pool {folder.path}`"
    predicted = [str(s) for s in pd.unique(predictions["source"])]
    if sorted(predicted) != sorted(metrics["sources"]):
        raise CrossdermError(
            f"{folder.metrics}: sources {', '.join(metrics['sources'])} do not match {folder.oof_predictions.name}'s "
            f"{', '.join(predicted)} ({hint})"
        )
    for source, rows in predictions.groupby("source", sort=False):
        y = label_indices(rows["label"])
        pred = rows[list(CLASSES)].to_numpy().argmax(axis=1)
        point = metrics_from_confusion(
            confusion_matrix(y, pred, len(CLASSES)), np.bincount(y, minlength=len(CLASSES)) > 0
        )
        section = metrics["sources"][str(source)]
        stale = section.get("n") != y.size or any(
            not isinstance((section.get(m) or {}).get("value"), float | int)
            or abs(section[m]["value"] - float(point[m])) > POINT_TOLERANCE
            for m in HEADLINE_METRICS
        )
        if stale:
            raise CrossdermError(
                f"{folder.metrics}: {source} metrics do not match {folder.oof_predictions.name} ({hint})"
            )
    sites = metrics.get("sites")
    if isinstance(sites, dict) and sites:
        counts: dict[str, int] = {}
        if "site" in predictions.columns:
            keys = predictions["source"].astype(str) + "/" + group_values(predictions, "site")
            counts = {str(k): int(v) for k, v in keys.value_counts().items()}
        if {key: (cell or {}).get("n") for key, cell in sites.items()} != counts:
            raise CrossdermError(
                f"{folder.metrics}: per-site images do not match {folder.oof_predictions.name}'s site column ({hint})"
            )


def load_run(run_dir: str | Path) -> Run:
    """Read one run folder; any missing, malformed or stale file is a one-line error naming it."""
    folder = RunFolder(run_dir).require()
    config = _read_config(folder.config)
    info = folder.read_run_info()
    if not isinstance(info.get("parameters"), int):
        raise CrossdermError(f"{folder.run_info}: 'parameters' must be an integer count")
    metrics = folder.read_metrics()
    _check_metrics(folder, metrics)
    if not folder.oof_predictions.is_file():
        raise CrossdermError(f"{folder.oof_predictions}: no such file (run `crossderm pool {folder.path}` first)")
    predictions = load_predictions(folder.oof_predictions)
    _check_fresh(folder, metrics, predictions)
    return Run(
        run_dir=folder.path,
        name=str(config["name"]),
        description=str(config.get("description") or ""),
        model=str(config["model"]),
        parameters=info["parameters"],
        train_sources=[str(s) for s in config["train_sources"]],
        sampler=str(config["sampler"]),
        metrics=metrics,
        predictions=predictions,
        histories=_read_histories(folder),
        calibration=folder.read_calibration(),
    )


def load_runs(run_dirs: Sequence[str | Path]) -> list[Run]:
    """Load every run; two runs of the same experiment name would make the tables ambiguous."""
    if not run_dirs:
        raise CrossdermError("no run folders given")
    runs = [load_run(d) for d in run_dirs]
    seen: dict[str, Path] = {}
    for run in runs:
        if run.name in seen:
            raise CrossdermError(f"{run.run_dir}: experiment name {run.name!r} is also the name of {seen[run.name]}")
        seen[run.name] = run.run_dir
    return runs


def report_sources(runs: Sequence[Run]) -> list[str]:
    """Every test source of any run, in order of first appearance (first run first)."""
    return list(dict.fromkeys(source for run in runs for source in run.sources))


def gap_sources(runs: Sequence[Run], reference_source: str) -> list[str]:
    """The sources with a gap against ``reference_source``: those some run tests together with it."""
    return [
        source
        for source in report_sources(runs)
        if source != reference_source and any({reference_source, source} <= set(run.sources) for run in runs)
    ]
