"""The run-folder contract: every file a ``crossderm cv`` run writes, where it lives, and how it is read.

::

    RUN_DIR/
      config.yaml            resolved experiment config (written once; a different config is refused)
      run.json               experiment, data folder, fold numbers, parameters, environment
      fold_<k>/
        checkpoint/          model.safetensors, optimizer.pt, state.json (replaced atomically every epoch)
        best.safetensors     weights of the best validation epoch
        model.json           model card: everything inference needs (crossderm.models.card)
        history.csv          one row per epoch
        val_predictions.csv  inner-validation predictions (temperature fitting)
        external_predictions.csv   predictions of the external (test-only) sources, when there are any
        predictions.csv      test predictions; its presence means the fold is finished
      oof_predictions.csv    every fold's test predictions pooled (each image once; external and site-matrix
                             images: the mean over the folds that predicted them, fold = -1)
      site_matrix_predictions.csv   site-matrix protocol: every (training site, test image) row
      metrics.json/.md       from crossderm.evaluate (also what ``crossderm evaluate --out`` writes)
      calibration.json       per-fold temperatures, ECE before/after
      README.md              Hugging Face-style model card (crossderm.models.hub_card), written when pooled

Every other module asks this one for a path, so the layout is written down exactly once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossderm.errors import CrossdermError
from crossderm.fsutil import read_json

CONFIG = "config.yaml"
RUN_INFO = "run.json"
OOF_PREDICTIONS = "oof_predictions.csv"
METRICS_JSON = "metrics.json"
METRICS_MD = "metrics.md"
CALIBRATION = "calibration.json"
HUB_CARD = "README.md"
FOLD_PATTERN = re.compile(r"fold_(\d+)")

CHECKPOINT = "checkpoint"
CHECKPOINT_WEIGHTS = "model.safetensors"
CHECKPOINT_OPTIMIZER = "optimizer.pt"
CHECKPOINT_STATE = "state.json"
BEST_WEIGHTS = "best.safetensors"
MODEL_CARD = "model.json"
HISTORY = "history.csv"
PREDICTIONS = "predictions.csv"
VAL_PREDICTIONS = "val_predictions.csv"
EXTERNAL_PREDICTIONS = "external_predictions.csv"
SITE_MATRIX_PREDICTIONS = "site_matrix_predictions.csv"
TENSORBOARD = "tensorboard"
TENSORBOARD_POOLED = "pooled"
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
REPORT = "report"


@dataclass(frozen=True)
class FoldFolder:
    """``RUN_DIR/fold_<k>``."""

    path: Path
    fold: int

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def best_weights(self) -> Path:
        return self.path / BEST_WEIGHTS

    @property
    def model_card(self) -> Path:
        return self.path / MODEL_CARD

    @property
    def history(self) -> Path:
        return self.path / HISTORY

    @property
    def predictions(self) -> Path:
        return self.path / PREDICTIONS

    @property
    def val_predictions(self) -> Path:
        return self.path / VAL_PREDICTIONS

    @property
    def external_predictions(self) -> Path:
        return self.path / EXTERNAL_PREDICTIONS

    @property
    def finished(self) -> bool:
        return self.predictions.is_file()


@dataclass(frozen=True)
class RunFolder:
    """One run folder; paths are properties, readers turn any problem into a one-line error naming the file."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def run_info(self) -> Path:
        return self.path / RUN_INFO

    @property
    def oof_predictions(self) -> Path:
        return self.path / OOF_PREDICTIONS

    @property
    def site_matrix_predictions(self) -> Path:
        return self.path / SITE_MATRIX_PREDICTIONS

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_JSON

    @property
    def metrics_md(self) -> Path:
        return self.path / METRICS_MD

    @property
    def calibration(self) -> Path:
        return self.path / CALIBRATION

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD

    def tensorboard_fold(self, k: int) -> Path:
        return self.tensorboard / f"fold_{k}"

    @property
    def tensorboard_pooled(self) -> Path:
        return self.tensorboard / TENSORBOARD_POOLED

    @property
    def mlflow_db(self) -> Path:
        return self.path / MLFLOW_DB

    @property
    def mlflow_artifacts(self) -> Path:
        return self.path / MLFLOW_ARTIFACTS

    @property
    def report(self) -> Path:
        return self.path / REPORT

    def onnx_models(self) -> list[Path]:
        """``*.onnx`` files directly in the run folder (``crossderm export --out RUN_DIR/model.onnx``)."""
        return sorted(self.path.glob("*.onnx")) if self.path.is_dir() else []

    @property
    def hub_card(self) -> Path:
        """The Hugging Face-style model card (``README.md``: YAML front matter + Markdown)."""
        return self.path / HUB_CARD

    def fold(self, k: int) -> FoldFolder:
        return FoldFolder(self.path / f"fold_{k}", int(k))

    def fold_numbers(self) -> list[int]:
        """The folds that have a folder here, in numeric order (``fold_<k>`` only; anything else is ignored)."""
        if not self.path.is_dir():
            return []
        found = (FOLD_PATTERN.fullmatch(p.name) for p in self.path.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def folds(self) -> list[FoldFolder]:
        return [self.fold(k) for k in self.fold_numbers()]

    def require(self) -> RunFolder:
        if not self.path.is_dir():
            raise CrossdermError(f"{self.path}: no such run folder")
        return self

    def read_run_info(self) -> dict[str, Any]:
        return read_json(self.run_info, f"is {self.path} a `crossderm cv` run folder?")

    def read_config(self) -> dict[str, Any]:
        """The resolved config as written (a mapping; validate it with crossderm.train.config to train)."""
        import yaml

        if not self.config.is_file():
            raise CrossdermError(f"{self.config}: no such file (is {self.path} a `crossderm cv` run folder?)")
        try:
            config = yaml.safe_load(self.config.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise CrossdermError(f"{self.config}: cannot read YAML ({' '.join(str(exc).split())})") from None
        if not isinstance(config, dict):
            raise CrossdermError(f"{self.config}: expected a mapping of settings")
        return config

    def read_metrics(self) -> dict[str, Any]:
        return read_json(self.metrics, f"run `crossderm pool {self.path}` first")

    def read_calibration(self, required: bool = False) -> dict[str, Any] | None:
        if not required and not self.calibration.is_file():
            return None
        return read_json(self.calibration, f"run `crossderm pool {self.path}` to fit the temperatures")

    def expected_folds(self) -> list[int]:
        """The folds this run must have before it can be pooled, as recorded in ``run.json`` by ``cv``."""
        info = self.read_run_info()
        folds = info.get("folds")
        if not isinstance(folds, list) or not folds or not all(isinstance(f, int) for f in folds):
            raise CrossdermError(f"{self.run_info}: 'folds' must be the list of the run's fold numbers")
        return sorted(folds)
