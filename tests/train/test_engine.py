"""One fold end to end on the small synthetic set: disjoint splits, seeded, resumable, pooled exactly once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crossderm.cli import main
from crossderm.datafolder import load_dataset
from crossderm.labels import CLASSES
from crossderm.train import engine
from crossderm.train.config import load_config
from crossderm.train.cv import run_cv
from crossderm.train.fold import fold_data

FAST = ["model=test_efficientnet", "epochs=3", "batch_size=32", "eval_batch_size=128", "lr=3e-3", "channels_last=false"]


def test_fold_sets_are_disjoint_and_lesion_grouped(synth_prepared: Path) -> None:
    manifest = load_dataset(synth_prepared).manifest
    config = load_config("demo_a_ham_only", FAST)
    data = fold_data(manifest, config, fold=2)
    assert set(data.train["source"]) == {"ham"} and set(data.val["source"]) == {"ham"}
    assert set(data.test["source"]) == {"ham", "isic"} and set(data.test["fold"]) == {2}
    assert 2 not in set(data.train["fold"]) | set(data.val["fold"])
    groups = [set(part["lesion_group"]) for part in (data.train, data.val, data.test)]
    assert not groups[0] & groups[1] and not groups[0] & groups[2] and not groups[1] & groups[2]
    assert 0.05 < len(data.val) / (len(data.train) + len(data.val)) < 0.2


def _fold_predictions(prepared: Path, out: Path, overrides: list[str] | None = None) -> pd.DataFrame:
    config = load_config("demo_b_joint", FAST + (overrides or []))
    run_cv(config, prepared, out, folds=[1])
    return pd.read_csv(out / "fold_1" / "predictions.csv", dtype={"image_id": str})


def test_same_seed_same_predictions(synth_prepared: Path, tmp_path: Path) -> None:
    first = _fold_predictions(synth_prepared, tmp_path / "a")
    second = _fold_predictions(synth_prepared, tmp_path / "b")
    pd.testing.assert_frame_equal(first, second)
    assert np.allclose(first[list(CLASSES)].sum(axis=1), 1.0, atol=1e-5)
    history = pd.read_csv(tmp_path / "a" / "fold_1" / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3]
    other = _fold_predictions(synth_prepared, tmp_path / "c", ["seed=1"])
    assert not np.allclose(first[list(CLASSES)], other[list(CLASSES)])


def test_bf16_autocast_path_keeps_fp32_weights_and_valid_probabilities(synth_prepared: Path, tmp_path: Path) -> None:
    """The GPU's mixed-precision path, run on CPU: autocast must not leak bf16 into the saved weights or
    into the probabilities written to disk."""
    from safetensors.torch import load_file

    predictions = _fold_predictions(synth_prepared, tmp_path / "bf16", ["amp=bf16", "epochs=1"])
    run = json.loads((tmp_path / "bf16" / "run.json").read_text())
    assert run["environment"]["bf16_autocast"] is True
    assert np.allclose(predictions[list(CLASSES)].sum(axis=1), 1.0, atol=1e-5)
    assert predictions[list(CLASSES)].to_numpy().std() > 0  # real outputs, not a constant
    weights = load_file(tmp_path / "bf16" / "fold_1" / "best.safetensors")
    assert {str(tensor.dtype) for tensor in weights.values() if tensor.is_floating_point()} == {"torch.float32"}


def test_resumed_fold_matches_uninterrupted(
    synth_prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = _fold_predictions(synth_prepared, tmp_path / "whole")
    original = engine.train_one_epoch
    calls: list[int] = []

    def crash_in_third_epoch(*args: object, **kwargs: object) -> tuple[float, float]:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "train_one_epoch", crash_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        _fold_predictions(synth_prepared, tmp_path / "crashed")
    state = json.loads((tmp_path / "crashed" / "fold_1" / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 2
    monkeypatch.setattr(engine, "train_one_epoch", original)
    code = main(
        [
            "cv",
            "--config",
            "demo_b_joint",
            "--data",
            str(synth_prepared),
            "--out",
            str(tmp_path / "crashed"),
            "--fold",
            "1",
            *[f"--set={o}" for o in FAST],
        ]
    )
    assert code == 2  # a checkpoint without --resume is refused, never silently overwritten
    config = load_config("demo_b_joint", FAST)
    run_cv(config, synth_prepared, tmp_path / "crashed", folds=[1], resume=True)
    resumed = pd.read_csv(tmp_path / "crashed" / "fold_1" / "predictions.csv", dtype={"image_id": str})
    pd.testing.assert_frame_equal(reference, resumed)


def test_cv_pools_every_image_exactly_once(synth_prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "cv",
            "--config",
            "demo_a_ham_only",
            "--data",
            str(synth_prepared),
            "--out",
            str(out),
            "--bootstrap",
            "200",
            *[f"--set={o}" for o in [*FAST, "epochs=1"]],
        ]
    )
    assert code == 0
    manifest = load_dataset(synth_prepared).manifest
    oof = pd.read_csv(out / "oof_predictions.csv", dtype={"image_id": str})
    # HAM-only training, tested on HAM folds and on all of ISIC: every image of both sources exactly once
    assert sorted(zip(oof["source"], oof["image_id"], strict=True)) == sorted(
        zip(manifest["source"], manifest["image_id"], strict=True)
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sources"]["ham"]["n"] == (manifest["source"] == "ham").sum()
    assert {"macro_f1", "accuracy", "balanced_accuracy"} <= set(metrics["gaps"]["ham - isic"])
    config = json.loads(json.dumps(__import__("yaml").safe_load((out / "config.yaml").read_text())))
    assert config["epochs"] == 1 and config["model"] == "test_efficientnet"
    assert json.loads((out / "run.json").read_text())["parameters"] > 0


def test_pool_refuses_a_partial_run(synth_prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "partial"
    run_cv(load_config("demo_b_joint", [*FAST, "epochs=1"]), synth_prepared, out, folds=[0, 3])
    assert not (out / "oof_predictions.csv").exists()
    assert main(["pool", str(out)]) == 2
    assert "fold(s) 1, 2, 4 not finished" in capsys.readouterr().err
