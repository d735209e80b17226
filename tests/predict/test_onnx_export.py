"""``crossderm export`` and ``predict --backend onnx``: one graph, same probabilities as torch, integrity checks."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from PIL import Image

from crossderm.cli import main
from crossderm.labels import CLASSES
from crossderm.predict.ensemble import Ensemble
from crossderm.predict.onnx_backend import OnnxEnsemble


@pytest.fixture(scope="module")
def exported(synth_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert main(["export", "--model", str(synth_run), "--out", str(out)]) == 0
    return out


def test_export_writes_one_checked_graph_and_sidecar(synth_run: Path, exported: Path) -> None:
    sidecar = json.loads(exported.with_name("model.onnx.json").read_text())
    assert sidecar["sha256"] == hashlib.sha256(exported.read_bytes()).hexdigest()
    assert sidecar["folds"] == [0, 1, 2, 3, 4]
    card = json.loads((synth_run / "fold_0" / "model.json").read_text())
    assert (sidecar["image_size"], sidecar["mean"], sidecar["std"]) == (card["image_size"], card["mean"], card["std"])
    assert sidecar["classes"] == list(CLASSES)
    model = onnx.load(str(exported))
    onnx.checker.check_model(model)
    (graph_input,) = model.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert [o.name for o in model.graph.output] == ["probs"]
    assert not list(exported.parent.glob(".*.tmp"))


@pytest.mark.parametrize(("n", "views"), [(1, 4), (7, 4), (5, 1), (3, 3)])
def test_onnx_matches_torch_ensemble(synth_run: Path, exported: Path, n: int, views: int) -> None:
    pixels = np.random.default_rng(n).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    torch_probs = Ensemble(synth_run).predict(pixels, views)
    onnx_probs = OnnxEnsemble(exported).predict(pixels, views)
    assert onnx_probs.shape == (n, len(CLASSES))
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-4, rtol=0)


def test_predict_cli_backends_agree(synth_run: Path, synth_raw: Path, exported: Path, tmp_path: Path) -> None:
    images = sorted((synth_raw / "HAM10000").rglob("*.jpg"))[:12]
    (tmp_path / "broken.jpg").write_text("not a jpeg")
    inputs = [*map(str, images), str(tmp_path / "broken.jpg")]
    torch_csv, onnx_csv = tmp_path / "torch.csv", tmp_path / "onnx.csv"
    assert main(["predict", "--model", str(synth_run), *inputs, "--out", str(torch_csv), "--batch-size", "5"]) == 1
    assert main(["predict", "--backend", "onnx", "--onnx-model", str(exported), "--model", str(synth_run), *inputs,
                 "--out", str(onnx_csv), "--batch-size", "5"]) == 1
    ours, theirs = pd.read_csv(torch_csv), pd.read_csv(onnx_csv)
    ood = ["ood_msp", "ood_energy", "ood_mahalanobis"]  # the OOD scores need the torch models' features
    assert not set(ood) & set(theirs.columns) and ours.loc[:11, ood].notna().all().all()
    ours = ours.drop(columns=ood)
    pd.testing.assert_frame_equal(ours.drop(columns=list(CLASSES)), theirs.drop(columns=list(CLASSES)))
    np.testing.assert_allclose(theirs[list(CLASSES)].to_numpy(), ours[list(CLASSES)].to_numpy(), atol=1e-4)
    assert ours["status"].tolist() == ["ok"] * 12 + ["error"]


def test_single_fold_export(synth_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "fold1.onnx"
    assert main(["export", "--model", str(synth_run), "--out", str(out), "--fold", "1", "--opset", "13"]) == 0
    assert json.loads((tmp_path / "fold1.onnx.json").read_text())["folds"] == [1]
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(OnnxEnsemble(out).predict(pixels), Ensemble(synth_run, [1]).predict(pixels), atol=1e-4)


def _predict_onnx(onnx_file: Path, tmp_path: Path, *extra: str) -> int:
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(image)
    return main(["predict", "--backend", "onnx", "--onnx-model", str(onnx_file), str(image),
                 "--out", str(tmp_path / "p.csv"), *extra])


def test_tampered_onnx_file_is_refused(exported: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "model.onnx"
    data = bytearray(exported.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    shutil.copy(exported.with_name("model.onnx.json"), tmp_path / "model.onnx.json")
    assert _predict_onnx(copy, tmp_path) == 2
    assert "sha256 does not match" in capsys.readouterr().err
    (tmp_path / "model.onnx.json").unlink()
    assert _predict_onnx(copy, tmp_path) == 2
    assert "model.onnx.json: not found (the sidecar of the ONNX file" in capsys.readouterr().err


def test_onnx_file_from_other_weights_is_refused(synth_run: Path, exported: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(synth_run, run, ignore=shutil.ignore_patterns("checkpoint"))
    card_path = run / "fold_2" / "model.json"
    card = json.loads(card_path.read_text())
    card["sha256"] = "0" * 64  # as if fold 2 had been retrained after the export
    card_path.write_text(json.dumps(card))
    assert _predict_onnx(exported, tmp_path, "--model", str(run)) == 2
    assert "exported from other weights" in capsys.readouterr().err
    assert _predict_onnx(exported, tmp_path, "--model", str(synth_run)) == 0


def test_export_and_onnx_usage_errors(synth_run: Path, exported: Path, tmp_path: Path, capsys) -> None:
    assert main(["export", "--model", str(synth_run), "--out", str(tmp_path / "m.onnx"), "--opset", "99"]) == 2
    assert "--opset must be" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
    assert _predict_onnx(exported, tmp_path, "--fold", "0") == 2
    assert "--fold applies to the torch backend" in capsys.readouterr().err
