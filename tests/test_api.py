"""The Python API as a user calls it: the ~10-line notebook flow of docs/api.md on tiny synthetic data, its results
equal to the command line's, and ``import crossderm`` staying light."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import crossderm
from crossderm.cli import main
from crossderm.errors import CrossdermError
from crossderm.labels import CLASSES

TINY = ["model=test_efficientnet", "epochs=1", "batch_size=32", "channels_last=false"]


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """docs/api.md's example, with tiny sizes."""
    root = tmp_path_factory.mktemp("api")
    crossderm.synthesize(root / "raw", ham_lesions=40, isic_lesions=40, image_scale=0.5)
    audit = crossderm.prepare_data(root / "data", ham=root / "raw/HAM10000", isic=root / "raw/ISIC2019",
                                   image_size=32, workers=1)
    metrics = crossderm.cross_validate("demo_b_joint", data=root / "data", out=root / "run", overrides=TINY,
                                       n_bootstrap=50)
    predictor = crossderm.load_predictor(root / "run", device="cpu")
    image = sorted((root / "raw/ISIC2019/ISIC_2019_Training_Input").glob("*.jpg"))[0]
    return {"root": root, "audit": audit, "metrics": metrics, "predictor": predictor, "image": image}


def test_the_flow_writes_a_run_and_returns_its_metrics(flow: dict) -> None:
    run = flow["root"] / "run"
    assert flow["audit"]["images"]["ham"]["total"] > 0
    assert flow["metrics"] == json.loads((run / "metrics.json").read_text())
    assert set(flow["metrics"]["sources"]) == {"ham", "isic"} and "ham - isic" in flow["metrics"]["gaps"]
    card = (run / "README.md").read_text()
    assert card.startswith("---\n") and "Research use only, not a diagnosis." in card
    assert "synthetic-data" in card and "**synthetic** images" in card  # synthesize() marks its output


def test_predict_a_path_a_pil_image_and_an_array_like_the_command_line(flow: dict, tmp_path: Path, capsys) -> None:
    predictor, image = flow["predictor"], flow["image"]
    assert predictor.classes == CLASSES and predictor.card.model == "test_efficientnet"
    with Image.open(image) as opened:
        table = predictor.predict([image, opened, np.asarray(opened.convert("RGB"))])
    assert list(table["image_id"]) == [image.stem, "image_1", "image_2"] and list(table["path"]) == [str(image), "", ""]
    assert (table["status"] == "ok").all()

    assert main(["predict", "--model", str(flow["root"] / "run"), str(image), "--out", str(tmp_path / "p.csv")]) == 0
    cli = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert list(cli.columns) == list(table.columns)
    np.testing.assert_allclose(table[list(CLASSES)].to_numpy(), np.repeat(cli[list(CLASSES)].to_numpy(), 3, 0),
                               rtol=0, atol=1e-6)
    assert set(table["predicted"]) == {cli["predicted"][0]}
    one = predictor.predict(str(image), tta=1)  # a single path; fewer views give other probabilities
    assert len(one) == 1 and not np.allclose(one[list(CLASSES)].to_numpy(), cli[list(CLASSES)].to_numpy())


def test_folders_and_bad_images(flow: dict, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.full((40, 50, 3), 120, np.uint8)).save(folder / "b.png")
    (folder / "a.jpg").write_bytes(b"not an image")
    table = flow["predictor"].predict([folder, tmp_path / "missing.jpg", np.zeros((2, 30, 30, 3), np.uint8)])
    assert list(table["image_id"]) == ["a", "b", "missing", "image_3", "image_4"]
    assert list(table["status"]) == ["error", "ok", "error", "ok", "ok"]
    assert "no such file" in table["error"][2] and table["predicted"][0] == ""
    with pytest.raises(CrossdermError, match="uint8"):
        flow["predictor"].predict(np.zeros((30, 30, 3), np.float32))


def test_evaluate_without_out_writes_nothing_and_equals_metrics_json(flow: dict, tmp_path: Path) -> None:
    run = flow["root"] / "run"
    before = sorted(p.name for p in run.iterdir())
    metrics = crossderm.evaluate_predictions(run / "oof_predictions.csv", n_bootstrap=50)
    assert metrics == flow["metrics"] and sorted(p.name for p in run.iterdir()) == before
    table = pd.read_csv(run / "oof_predictions.csv", dtype={"site": str})
    again = crossderm.evaluate_predictions(table, tmp_path / "eval", by=["site"], n_bootstrap=50)
    assert again["sources"] == metrics["sources"] and (tmp_path / "eval" / "metrics.md").is_file()


def test_report_of_the_run(flow: dict, tmp_path: Path) -> None:
    summary = crossderm.write_report([flow["root"] / "run"], tmp_path / "report")
    assert (tmp_path / "report" / "report.html").is_file() and summary == json.loads(
        (tmp_path / "report" / "summary.json").read_text())


def test_user_errors_are_one_line_crossderm_errors(tmp_path: Path) -> None:
    with pytest.raises(CrossdermError, match="paper_b_joint_convnext_tiny"):
        crossderm.cross_validate("paper_c", data=tmp_path, out=tmp_path / "run")
    with pytest.raises(CrossdermError, match="no such run folder"):
        crossderm.load_predictor(tmp_path / "absent")
    assert "demo_b_joint" in crossderm.presets()


def test_import_crossderm_is_light_and_the_api_loads_on_first_use() -> None:
    probe = (
        "import sys, crossderm; "
        "heavy = [m for m in ('torch', 'pandas', 'numpy', 'crossderm.api') if m in sys.modules]; "
        "f = crossderm.load_predictor; print(heavy, 'torch' in sys.modules, f.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "False", "crossderm.api"]  # even crossderm.api is light until called


def test_the_re_exports_are_the_api() -> None:
    from crossderm import api

    assert set(crossderm.__all__) - {"__version__"} == set(api.__all__)
    assert all(getattr(crossderm, name) is getattr(api, name) for name in api.__all__)
    assert set(api.__all__) <= set(dir(crossderm))
    with pytest.raises(AttributeError):
        crossderm.no_such_function  # noqa: B018
