"""Experiment tracking, read back from what the backends wrote: TensorBoard event files (EventAccumulator) and a
real MLflow SQLite store (MlflowClient); failures warn and never cost the run; resume never duplicates a step."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from crossderm.cli import main
from crossderm.labels import CLASSES
from crossderm.runfolder import RunFolder
from crossderm.train import engine
from crossderm.train.tracking import (
    EPOCH_SCALARS,
    Tracker,
    TrackingOptions,
    TrackingWarning,
    config_params,
    final_scalars,
    open_tracker,
)
from crossderm.train.tracking_mlflow import MlflowTracker, default_mlflow_uri
from crossderm.train.tracking_tensorboard import TensorBoardTracker

TINY = ["model=test_efficientnet", "epochs=2", "batch_size=32", "eval_batch_size=128", "lr=3e-3",
        "channels_last=false"]
FOLDS = [0, 1, 2, 3, 4]


def _cv(prepared: Path, out: Path, *extra: str, overrides: list[str] = TINY) -> int:
    return main(["cv", "--config", "demo_b_joint", "--data", str(prepared), "--out", str(out), "--bootstrap", "50",
                 *extra, *[f"--set={o}" for o in overrides]])


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _client(run: Path):  # noqa: ANN202 - MlflowClient, imported lazily
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=default_mlflow_uri(RunFolder(run)))


def _runs(client, role: str) -> list:  # noqa: ANN001
    experiment = client.get_experiment_by_name("demo_b_joint")
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`crossderm.role` = '{role}'")


def _assert_history(history: pd.DataFrame, series: dict[str, list[tuple[int, float]]], names: dict[str, str]) -> None:
    """Every history.csv column, epoch by epoch, exactly once (float32 in event files, hence the tolerance)."""
    for column, name in names.items():
        steps = [step for step, _ in series[name]]
        assert steps == history["epoch"].tolist(), (name, steps)
        assert np.allclose([v for _, v in series[name]], history[column], rtol=1e-6, atol=0), name


@pytest.fixture(scope="module")
def tracked_run(synth_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 5-fold run with TensorBoard (the default) and MLflow (the run's local store)."""
    out = tmp_path_factory.mktemp("tracked") / "run"
    assert _cv(synth_prepared, out, "--mlflow") == 0
    return out


def test_tensorboard_epoch_scalars_equal_history(tracked_run: Path) -> None:
    run = RunFolder(tracked_run)
    for fold in FOLDS:
        history = pd.read_csv(run.fold(fold).history)
        assert history["epoch"].tolist() == [1, 2]
        _assert_history(history, _scalars(run.tensorboard_fold(fold)), EPOCH_SCALARS)


def test_tensorboard_pooled_metrics_text_and_figures(tracked_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = RunFolder(tracked_run)
    metrics = json.loads(run.metrics.read_text())
    scalars = _scalars(run.tensorboard_pooled)
    for source, summary in metrics["sources"].items():
        for metric in ("macro_f1", "accuracy", "balanced_accuracy"):
            for suffix, key in (("", "value"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high")):
                assert scalars[f"source/{source}/{metric}{suffix}"] == [(0, pytest.approx(summary[metric][key]))]
    assert metrics["sites"], "the synthetic data have sites: per-site metrics must be logged"
    for key, cell in metrics["sites"].items():
        if cell.get("too_few"):
            assert f"site/{key}/macro_f1" not in scalars and scalars[f"site/{key}/n"] == [(0, cell["n"])]
        else:
            assert scalars[f"site/{key}/macro_f1_ci_low"] == [(0, pytest.approx(cell["macro_f1"]["ci_low"]))]
    gap = metrics["gaps"]["ham - isic"]["macro_f1"]["value"]
    assert scalars["gap/ham - isic/macro_f1"] == [(0, pytest.approx(gap))]
    events = EventAccumulator(str(run.tensorboard_pooled), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    assert set(events.Tags()["images"]) == {"confusion/ham", "confusion/isic", "per_class_f1", "per_site_macro_f1"}
    image = events.Images("confusion/ham")[0]
    assert image.encoded_image_string.startswith(b"\x89PNG") and image.width > 100
    text = events.Tensors("metrics/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text == run.metrics_md.read_text()


def test_mlflow_parent_and_nested_fold_runs(tracked_run: Path) -> None:
    client = _client(tracked_run)
    run = RunFolder(tracked_run)
    (parent,) = _runs(client, "experiment")
    config = yaml.safe_load(run.config.read_text())
    assert parent.data.params == config_params(config)
    assert parent.data.params["model"] == "test_efficientnet" and parent.data.params["epochs"] == "2"
    assert parent.data.params["augment.min_area"] == str(config["augment"]["min_area"])
    assert parent.info.status == "FINISHED"
    folds = _runs(client, "fold")
    assert sorted(int(r.data.tags["crossderm.fold"]) for r in folds) == FOLDS
    for fold_run in folds:
        assert fold_run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert fold_run.info.status == "FINISHED"
        history = pd.read_csv(run.fold(int(fold_run.data.tags["crossderm.fold"])).history)
        series = {name: [(m.step, m.value) for m in client.get_metric_history(fold_run.info.run_id, name)]
                  for name in EPOCH_SCALARS}
        _assert_history(history, series, {name: name for name in EPOCH_SCALARS})
        assert {a.path for a in client.list_artifacts(fold_run.info.run_id)} == {"model.json", "history.csv"}

    metrics = json.loads(run.metrics.read_text())
    pooled = parent.data.metrics
    assert pooled == pytest.approx(final_scalars(metrics))
    for source, summary in metrics["sources"].items():
        assert pooled[f"source/{source}/macro_f1"] == summary["macro_f1"]["value"]
        assert pooled[f"source/{source}/macro_f1_ci_low"] == summary["macro_f1"]["ci_low"]
        assert pooled[f"source/{source}/balanced_accuracy_ci_high"] == summary["balanced_accuracy"]["ci_high"]
        assert pooled[f"source/{source}/n"] == summary["n"]
    key, cell = next((k, c) for k, c in metrics["sites"].items() if not c.get("too_few"))
    assert pooled[f"site/{key}/accuracy"] == cell["accuracy"]["value"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    expected = {"metrics.json", "metrics.md", "calibration.json", "config.yaml", "run.json", "fold_0", "figures"}
    assert expected <= artifacts
    assert run.hub_card.is_file() and "README.md" in artifacts  # the model card pool writes
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "fold_3")} == {"fold_3/model.json"}
    assert "figures/confusion_ham.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    logged = Path(client.download_artifacts(parent.info.run_id, "metrics.json", str(tracked_run.parent)))
    assert json.loads(logged.read_text()) == metrics
    assert (tracked_run / "mlflow.db").is_file() and (tracked_run / "mlartifacts").is_dir()


def test_pool_logs_to_the_same_parent_with_report_and_onnx(tracked_run: Path) -> None:
    run = RunFolder(tracked_run)
    (run.report / "figures").mkdir(parents=True)
    (run.report / "report.md").write_text("# report\n")
    (run.report / "figures" / "curves.png").write_bytes(b"\x89PNG fake")
    (tracked_run / "model.onnx").write_bytes(b"onnx bytes")
    (tracked_run / "model.onnx.json").write_text("{}")
    assert main(["pool", str(tracked_run), "--bootstrap", "50", "--mlflow"]) == 0
    client = _client(tracked_run)
    (parent,) = _runs(client, "experiment")  # found again, not a second parent
    assert len(_runs(client, "fold")) == len(FOLDS)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"model.onnx", "model.onnx.json", "report"} <= artifacts
    report_figures = {a.path for a in client.list_artifacts(parent.info.run_id, "report/figures")}
    assert report_figures == {"report/figures/curves.png"}
    # TensorBoard's pooled folder is a snapshot of metrics.json: replaced, one value per tag
    assert len(list(run.tensorboard_pooled.glob("events.out.tfevents.*"))) == 1
    assert all(len(points) == 1 for points in _scalars(run.tensorboard_pooled).values())


def test_a_failing_backend_warns_once_and_the_run_is_unchanged(
    synth_prepared: Path, tracked_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*_: object, **__: object) -> None:
        raise OSError("No space left on device\n(second line)")

    def server_down(*_: object, **__: object) -> None:
        raise ConnectionError("tracking server unreachable")

    monkeypatch.setattr(TensorBoardTracker, "log_epoch", disk_full)
    monkeypatch.setattr(MlflowTracker, "__init__", server_down)
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _cv(synth_prepared, out, "--fold", "0", "--mlflow") == 0
    messages = [str(w.message) for w in caught if issubclass(w.category, TrackingWarning)]
    assert len(messages) == 2, messages
    assert all("\n" not in m and "training goes on" in m for m in messages)
    assert any(m.startswith("TensorBoard tracking stopped (log_epoch: OSError: No space left") for m in messages)
    assert any(m.startswith("MLflow tracking stopped (could not start: ConnectionError") for m in messages)
    ours = pd.read_csv(out / "fold_0" / "predictions.csv", dtype={"image_id": str})
    reference = pd.read_csv(tracked_run / "fold_0" / "predictions.csv", dtype={"image_id": str})
    pd.testing.assert_frame_equal(ours[reference.columns], reference, check_exact=False, atol=1e-6)
    assert np.allclose(ours[list(CLASSES)].sum(axis=1), 1.0, atol=1e-5)


def test_mlflow_not_installed_is_a_one_line_error_before_training(
    synth_prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now raises ImportError
    out = tmp_path / "run"
    assert _cv(synth_prepared, out, "--mlflow") == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and 'pip install "crossderm[mlflow]"' in error
    assert not out.exists()  # nothing trained, nothing written
    assert main(["pool", str(tmp_path), "--mlflow"]) == 2


def test_no_tensorboard_writes_no_event_files(synth_prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert _cv(synth_prepared, out, "--fold", "0", "--no-tensorboard", overrides=[*TINY, "epochs=1"]) == 0
    assert (out / "fold_0" / "predictions.csv").is_file()
    assert not (out / "tensorboard").exists() and not list(out.rglob("events.out.tfevents.*"))


def test_resume_continues_without_duplicate_steps(
    synth_prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attempt 1 (TensorBoard only) stops in epoch 2; the resume (TensorBoard + MLflow) logs epoch 2 once to
    TensorBoard and back-fills the checkpointed epoch 1 into MLflow, which had not seen the fold."""
    out = tmp_path / "run"
    original = engine.train_one_epoch
    calls: list[int] = []

    def stop_in_second_epoch(*args: object, **kwargs: object) -> tuple[float, float]:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "train_one_epoch", stop_in_second_epoch)
    assert _cv(synth_prepared, out, "--fold", "0") == 130
    run = RunFolder(out)
    assert [step for step, _ in _scalars(run.tensorboard_fold(0))["train/loss"]] == [1]
    monkeypatch.setattr(engine, "train_one_epoch", original)
    assert _cv(synth_prepared, out, "--fold", "0", "--resume", "--mlflow") == 0

    history = pd.read_csv(run.fold(0).history)
    assert history["epoch"].tolist() == [1, 2]
    _assert_history(history, _scalars(run.tensorboard_fold(0)), EPOCH_SCALARS)
    client = _client(out)
    (fold_run,) = _runs(client, "fold")
    series = {name: [(m.step, m.value) for m in client.get_metric_history(fold_run.info.run_id, name)]
              for name in EPOCH_SCALARS}
    _assert_history(history, series, {name: name for name in EPOCH_SCALARS})
    assert fold_run.info.status == "FINISHED"
    (parent,) = _runs(client, "experiment")
    assert parent.info.status == "RUNNING"  # folds 1-4 still to run, then pool


def test_only_rank_zero_tracks(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "run")
    options = TrackingOptions(tensorboard=True, mlflow="")
    assert type(open_tracker(run, {"name": "x"}, options, is_main=False)) is Tracker
    assert type(open_tracker(run, {"name": "x"}, None)) is Tracker
    assert not run.path.exists()
    with open_tracker(run, {"name": "x"}, TrackingOptions(), is_main=True) as tracker:
        assert tracker.name == "TensorBoard"


def test_a_fold_started_again_from_scratch_replaces_its_nested_run(tmp_path: Path) -> None:
    """No training needed: the tracker's own calls. A changed config gets a new parent run, too."""
    run = RunFolder(tmp_path / "run")
    row = {"epoch": 1, "train_loss": 2.0, "val_macro_f1": 0.1, "lr": 1e-3, "images_per_s": 50.0, "seconds": 1.0}
    options = TrackingOptions(tensorboard=False, mlflow="")
    for attempt in range(2):
        with open_tracker(run, {"name": "demo_b_joint", "epochs": 2}, options) as tracker:
            tracker.start_fold(0, "fold 0", [])
            tracker.log_epoch(0, {**row, "train_loss": 2.0 + attempt})
    client = _client(run.path)
    (parent,) = _runs(client, "experiment")
    (fold_run,) = _runs(client, "fold")
    assert [(m.step, m.value) for m in client.get_metric_history(fold_run.info.run_id, "train_loss")] == [(1, 3.0)]
    assert fold_run.info.status == "KILLED"  # closed while the fold was still open
    with open_tracker(run, {"name": "demo_b_joint", "epochs": 3}, options):
        pass
    assert len(_runs(client, "experiment")) == 2
