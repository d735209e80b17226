"""Experiment tracking: TensorBoard event files (on by default) and MLflow (optional extra) for ``cv`` and ``pool``.

One small interface, :class:`Tracker`, that the training code calls at five points: a fold starts (with the
epochs its checkpoint already holds), an epoch ends (the ``history.csv`` row), a fold ends (its model card), the
run is pooled (``metrics.json``, the run's files), and the process ends. Two backends implement it, each in its
own module: :mod:`crossderm.train.tracking_tensorboard` and :mod:`crossderm.train.tracking_mlflow`; this module
also holds what both log under the same names (:data:`EPOCH_SCALARS`, :func:`final_scalars`, :func:`config_params`).

Resume never duplicates a step: an epoch is logged only after its checkpoint is written, and a resumed fold
first asks each backend which epochs it already has, logs the checkpointed ones it lacks and goes on from there.

A tracker must never cost a training run: every backend call runs inside :class:`Guarded`, which turns an
exception into one :class:`TrackingWarning` and stops that backend for the rest of the process. Only rank 0 of a
torchrun job tracks (:func:`open_tracker` returns the no-op :class:`Tracker` elsewhere).
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crossderm.errors import CrossdermError
from crossderm.runfolder import RunFolder

MLFLOW_INSTALL = 'pip install "crossderm[mlflow]"'
# history.csv column -> TensorBoard tag (MLflow uses the column names themselves)
EPOCH_SCALARS = {
    "train_loss": "train/loss",
    "lr": "train/lr",
    "val_macro_f1": "val/macro_f1",
    "images_per_s": "speed/images_per_s",
    "seconds": "speed/epoch_seconds",
}
FINAL_METRICS = ("macro_f1", "accuracy", "balanced_accuracy", "macro_auc")
SITE_METRICS = ("macro_f1", "accuracy", "balanced_accuracy")


class TrackingWarning(UserWarning):
    """A tracking backend failed; it stops, the training goes on."""


@dataclass(frozen=True)
class TrackingOptions:
    """What ``--no-tensorboard`` / ``--mlflow [URI]`` asked for; ``mlflow=""`` = the default local store."""

    tensorboard: bool = True
    mlflow: str | None = None


def check_tracking(options: TrackingOptions | None) -> None:
    """Refuse ``--mlflow`` without MLflow before any work (a missing extra must never cost a training run)."""
    if options is None or options.mlflow is None:
        return
    needed = ["mlflow"]
    if not options.mlflow or options.mlflow.startswith("sqlite:"):
        needed += ["sqlalchemy", "alembic"]  # MLflow's SQL store
    for module in needed:
        try:
            __import__(module)
        except ImportError:
            raise CrossdermError(f"--mlflow needs MLflow ({module} is not installed): {MLFLOW_INSTALL}") from None


class Tracker:
    """The interface, and the no-op tracker (non-zero ranks, tracking off)."""

    name = "none"

    def start_fold(self, fold: int, job: str, history: list[dict[str, Any]]) -> None:
        """Fold ``fold`` starts; ``history``: the rows its checkpoint already holds (empty for a fresh fold)."""

    def log_epoch(self, fold: int, row: dict[str, Any]) -> None:
        """One ``history.csv`` row (epoch, train_loss, val_macro_f1, lr, images_per_s, seconds)."""

    def end_fold(self, fold: int, run: RunFolder, state: dict[str, Any]) -> None:
        """The fold is predicted and its model card written."""

    def log_pooled(self, run: RunFolder, metrics: dict[str, Any]) -> None:
        """``metrics.json`` and ``calibration.json`` are written."""

    def close(self, failed: bool = False) -> None:
        """End of the process; ``failed``: it ends with an error (open runs are marked so)."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.close(failed=exc_type is not None)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


class Guarded(Tracker):
    """One backend behind a guard: its first exception becomes a :class:`TrackingWarning` and stops it."""

    def __init__(self, name: str, make: Callable[[], Tracker]) -> None:
        self.name = name
        self.backend: Tracker | None = None
        try:
            self.backend = make()
        except Exception as exc:
            self._stop("could not start", exc)

    def _stop(self, what: str, exc: Exception) -> None:
        warnings.warn(f"{self.name} tracking stopped ({what}: {_one_line(exc)}); training goes on without it",
                      TrackingWarning, stacklevel=4)
        backend, self.backend = self.backend, None
        if backend is not None:
            with contextlib.suppress(Exception):  # already failing; the warning above says so
                backend.close(failed=True)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> None:
        if self.backend is None:
            return
        try:
            getattr(self.backend, method)(*args, **kwargs)
        except Exception as exc:
            self._stop(method, exc)

    @property
    def active(self) -> bool:
        return self.backend is not None

    def start_fold(self, fold: int, job: str, history: list[dict[str, Any]]) -> None:
        self._call("start_fold", fold, job, history)

    def log_epoch(self, fold: int, row: dict[str, Any]) -> None:
        self._call("log_epoch", fold, row)

    def end_fold(self, fold: int, run: RunFolder, state: dict[str, Any]) -> None:
        self._call("end_fold", fold, run, state)

    def log_pooled(self, run: RunFolder, metrics: dict[str, Any]) -> None:
        self._call("log_pooled", run, metrics)

    def close(self, failed: bool = False) -> None:
        self._call("close", failed=failed)
        self.backend = None


class Trackers(Tracker):
    """Several guarded backends called in turn."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers
        self.name = "+".join(t.name for t in trackers) or "none"

    def start_fold(self, fold: int, job: str, history: list[dict[str, Any]]) -> None:
        for tracker in self.trackers:
            tracker.start_fold(fold, job, history)

    def log_epoch(self, fold: int, row: dict[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.log_epoch(fold, row)

    def end_fold(self, fold: int, run: RunFolder, state: dict[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.end_fold(fold, run, state)

    def log_pooled(self, run: RunFolder, metrics: dict[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.log_pooled(run, metrics)

    def close(self, failed: bool = False) -> None:
        for tracker in self.trackers:
            tracker.close(failed=failed)


def open_tracker(
    run: RunFolder, config: dict[str, Any], options: TrackingOptions | None, is_main: bool = True
) -> Tracker:
    """The trackers ``options`` ask for (rank 0 only); ``--mlflow`` without MLflow is an error, raised here."""
    check_tracking(options)
    if options is None or not is_main:
        return Tracker()
    # imported here, not at the top: the backends import this module (Tracker, EPOCH_SCALARS)
    from crossderm.train.tracking_mlflow import MlflowTracker
    from crossderm.train.tracking_tensorboard import TensorBoardTracker

    trackers: list[Tracker] = []
    if options.tensorboard:
        trackers.append(Guarded("TensorBoard", lambda: TensorBoardTracker(run, config)))
    if options.mlflow is not None:
        uri = options.mlflow
        trackers.append(Guarded("MLflow", lambda: MlflowTracker(run, config, uri)))
    return Trackers(trackers)


# ---- what is logged: the same names for both backends -------------------------------------------------------


def config_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """The resolved config flattened (``augment.min_area``); strings as they are, other values as JSON."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(config_params(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value)
    return out


def metric_name(name: str) -> str:
    """MLflow's metric-name alphabet (letters, digits, ``_-. :/``); anything else becomes ``_``."""
    return re.sub(r"[^\w\-. :/]", "_", name)


def _with_ci(out: dict[str, float], name: str, entry: dict[str, Any] | None) -> None:
    if not entry or entry.get("value") is None:
        return
    out[metric_name(name)] = float(entry["value"])
    for bound in ("ci_low", "ci_high"):
        if entry.get(bound) is not None:
            out[metric_name(f"{name}_{bound}")] = float(entry[bound])


def final_scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """metrics.json as flat scalars: ``source/<s>/<metric>`` (+ ``_ci_low``/``_ci_high``, ``/n``),
    ``gap/<ref - other>/<metric>``, ``site/<source>/<site>/<metric>`` (too-few sites: ``/n`` only) and
    ``site_summary/...``."""
    out: dict[str, float] = {}
    for source, summary in metrics.get("sources", {}).items():
        out[metric_name(f"source/{source}/n")] = float(summary["n"])
        for m in FINAL_METRICS:
            _with_ci(out, f"source/{source}/{m}", summary.get(m))
    for gap, entry in metrics.get("gaps", {}).items():
        for m in SITE_METRICS:
            _with_ci(out, f"gap/{gap}/{m}", entry.get(m))
    for key, cell in (metrics.get("sites") or {}).items():
        out[metric_name(f"site/{key}/n")] = float(cell["n"])
        if not cell.get("too_few"):
            for m in SITE_METRICS:
                _with_ci(out, f"site/{key}/{m}", cell.get(m))
    summary = metrics.get("site_summary")
    if summary:
        _with_ci(out, "site_summary/mean_macro_f1", summary.get("mean_macro_f1"))
        _with_ci(out, "site_summary/min_macro_f1", summary.get("min_macro_f1"))
        _with_ci(out, "site_summary/worst_site_macro_f1", (summary.get("worst_site") or {}).get("macro_f1"))
    return out
