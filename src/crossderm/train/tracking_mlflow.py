"""MLflow backend of :class:`~crossderm.train.tracking.Tracker` (``MlflowClient`` only, no fluent global state).

One parent run per run folder (found again by a tag and its params, so separate ``--fold k`` jobs and ``pool``
share it) with the resolved config as params, one nested run per fold with per-epoch metrics (step = epoch; a
fold started from scratch replaces an earlier nested run of that fold), and on pool the pooled metrics and the
run's files (metrics, calibration, model cards, ``report/`` and ``*.onnx`` when present) as artifacts. The
default store is ``sqlite:///RUN_DIR/mlflow.db`` with artifacts in ``RUN_DIR/mlartifacts``: MLflow 3 refuses its
plain ``./mlruns`` file store unless an environment variable opts back in, and SQLite needs no server.
"""

from __future__ import annotations

import hashlib
import tempfile
import warnings
from pathlib import Path
from typing import Any

from crossderm.runfolder import RunFolder
from crossderm.train.tracking import EPOCH_SCALARS, Tracker, config_params, final_scalars
from crossderm.train.tracking_figures import figure_png, figures

ROLE_TAG, RUN_KEY_TAG, RUN_DIR_TAG = "crossderm.role", "crossderm.run_key", "crossderm.run_dir"
FOLD_TAG, PARENT_TAG = "crossderm.fold", "mlflow.parentRunId"


def default_mlflow_uri(run: RunFolder) -> str:
    """The store of a bare ``--mlflow``: the run folder's own SQLite file."""
    return f"sqlite:///{run.mlflow_db.absolute()}"


def run_key(run: RunFolder) -> str:
    """The tag that finds a run folder's parent run again (a hash: paths would need quoting in filters)."""
    return hashlib.sha256(str(run.path.resolve()).encode()).hexdigest()[:20]


class MlflowTracker(Tracker):
    name = "MLflow"

    def __init__(self, run: RunFolder, config: dict[str, Any], uri: str) -> None:
        from mlflow.tracking import MlflowClient

        self.run, self.config = run, config
        local = not uri
        self.uri = default_mlflow_uri(run) if local else uri
        if local:
            run.path.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # MLflow's SQL store setup warns about SQLAlchemy APIs it uses; nothing a user of ours can act on
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            self.client = MlflowClient(tracking_uri=self.uri)
            self.experiment_id = self._experiment(str(config.get("name", "crossderm")),
                                                  run.mlflow_artifacts.absolute().as_uri() if local else None)
        self.parent = self._parent()
        self.folds: dict[int, str] = {}
        self.logged: dict[int, set[int]] = {}

    def _experiment(self, name: str, artifact_location: str | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifact_location)
        except Exception:  # created meanwhile by another job of this run
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _find(self, filters: dict[str, str], max_results: int = 1) -> list[Any]:
        """Active runs with these tags, newest first."""
        query = " AND ".join(f"tags.`{key}` = '{value}'" for key, value in filters.items())
        return list(self.client.search_runs([self.experiment_id], filter_string=query,
                                            order_by=["attributes.start_time DESC"], max_results=max_results))

    def _parent(self) -> str:
        """This run folder's parent run: the newest with its key and the same config, else a new one."""
        from mlflow.entities import Param

        key = run_key(self.run)
        params = config_params(self.config)
        for found in self._find({RUN_KEY_TAG: key, ROLE_TAG: "experiment"}, max_results=20):
            if found.data.params == params:
                return found.info.run_id
        parent = self.client.create_run(self.experiment_id, run_name=str(self.config.get("name")), tags={
            RUN_KEY_TAG: key, ROLE_TAG: "experiment", RUN_DIR_TAG: str(self.run.path.resolve()),
        })
        run_id = parent.info.run_id
        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):  # log_batch takes at most 100 params per call
            self.client.log_batch(run_id, params=items[start:start + 100])
        return run_id

    def start_fold(self, fold: int, job: str, history: list[dict[str, Any]]) -> None:
        """Resumed: the fold's nested run goes on. From scratch: an earlier one (an attempt that never reached a
        checkpoint, or a deleted fold folder) is soft-deleted and a new one started."""
        found = next(iter(self._find({PARENT_TAG: self.parent, FOLD_TAG: str(fold)})), None)
        if found is not None and not history:
            self.client.delete_run(found.info.run_id)
            found = None
        if found is None:
            created = self.client.create_run(self.experiment_id, run_name=f"fold {fold}", tags={
                PARENT_TAG: self.parent, FOLD_TAG: str(fold), ROLE_TAG: "fold", "crossderm.job": job,
            })
            run_id, logged = created.info.run_id, set()
        else:
            run_id = found.info.run_id
            logged = {int(m.step) for m in self.client.get_metric_history(run_id, "train_loss")}
            self.client.update_run(run_id, status="RUNNING")
        self.folds[fold], self.logged[fold] = run_id, logged
        for row in history:  # checkpointed epochs this store lacks
            self.log_epoch(fold, row)

    def log_epoch(self, fold: int, row: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        epoch = int(row["epoch"])
        if epoch in self.logged[fold]:
            return
        now = _millis()
        metrics = [Metric(column, float(row[column]), now, epoch) for column in EPOCH_SCALARS
                   if row.get(column) is not None]
        self.client.log_batch(self.folds[fold], metrics=metrics)
        self.logged[fold].add(epoch)

    def end_fold(self, fold: int, run: RunFolder, state: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        run_id = self.folds.pop(fold)
        now = _millis()
        self.client.log_batch(run_id, metrics=[
            Metric("best_epoch", float(state["best_epoch"]), now, 0),
            Metric("best_val_macro_f1", float(state["best_score"]), now, 0),
        ])
        folder = run.fold(fold)
        for path in (folder.model_card, folder.history):
            if path.is_file():
                self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id, "FINISHED")

    def log_pooled(self, run: RunFolder, metrics: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        now = _millis()
        items = [Metric(name, value, now, 0) for name, value in final_scalars(metrics).items()]
        for start in range(0, len(items), 1000):  # log_batch takes at most 1000 metrics per call
            self.client.log_batch(self.parent, metrics=items[start:start + 1000])
        onnx = [p for model in run.onnx_models() for p in (model, model.with_name(model.name + ".json"))]
        cards = [run.hub_card, *sorted(run.path.glob("*.README.md"))]  # pool's model card; export's beside its file
        for path in (run.metrics, run.metrics_md, run.calibration, run.config, run.run_info, *cards, *onnx):
            if path.is_file():
                self.client.log_artifact(self.parent, str(path))
        for folder in run.folds():
            if folder.model_card.is_file():
                self.client.log_artifact(self.parent, str(folder.model_card), artifact_path=folder.path.name)
        if run.report.is_dir():
            self.client.log_artifacts(self.parent, str(run.report), artifact_path=run.report.name)
        with tempfile.TemporaryDirectory(prefix="crossderm-figures-") as tmp:
            for name, fig in figures(metrics).items():
                path = Path(tmp) / f"{name.replace('/', '_')}.png"
                path.write_bytes(figure_png(fig))
            self.client.log_artifacts(self.parent, tmp, artifact_path="figures")
        self.client.set_terminated(self.parent, "FINISHED")

    def close(self, failed: bool = False) -> None:
        for run_id in self.folds.values():  # folds still open: the process is ending early
            self.client.set_terminated(run_id, "FAILED" if failed else "KILLED")
        self.folds.clear()


def _millis() -> int:
    import time

    return int(time.time() * 1000)
