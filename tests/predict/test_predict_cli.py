"""``crossderm predict``: inputs, the training preprocessing, per-image error rows, output formats, exit codes."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from crossderm.cli import main
from crossderm.imaging import load_image
from crossderm.labels import CLASSES, ISIC2019_COLUMNS
from crossderm.predict.ensemble import Ensemble
from crossderm.predict.inputs import collect_inputs


def _rgb(seed: int, height: int = 90, width: int = 120) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _expected(run: Path, paths: list[Path], folds: list[int] | None = None, views: int = 4) -> np.ndarray:
    """What the ensemble gives on the exact training preprocessing of ``paths``."""
    ensemble = Ensemble(run, folds)
    pixels = np.stack([np.asarray(load_image(p, ensemble.image_size)) for p in paths])
    return ensemble.predict(pixels, views)


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    """Good images in nested folders, plus files the folder scan must skip."""
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    Image.fromarray(_rgb(0)).save(folder / "b_lesion.jpg", quality=92)
    Image.fromarray(_rgb(1, 100, 100)).save(folder / "a_lesion.PNG")
    Image.fromarray(_rgb(2, 80, 64)).save(folder / "sub" / "c_lesion.tif")
    Image.fromarray(_rgb(3)).save(folder / ".hidden" / "skip.jpg")
    (folder / "notes.txt").write_text("not an image suffix")
    return folder


@pytest.fixture()
def bad_images(tmp_path: Path) -> Path:
    folder = tmp_path / "bad"
    folder.mkdir()
    rgb = _rgb(4)
    Image.fromarray(rgb).save(folder / "ok.jpg", quality=90)
    (folder / "not_image.jpg").write_text("hello, I am text\n")
    data = (folder / "ok.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    Image.fromarray(rgb[..., 0]).save(folder / "gray.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 250).save(folder / "gray16.png")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(folder / "alpha.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)  # declares 10^10 pixels in 60 bytes
    (folder / "bomb.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 8))
        + _png_chunk(b"IEND", b"")
    )
    return folder


def test_folder_scan_is_recursive_sorted_and_skips_hidden(images: Path) -> None:
    found = collect_inputs([images])
    assert [p.relative_to(images).as_posix() for p in found] == ["a_lesion.PNG", "b_lesion.jpg", "sub/c_lesion.tif"]


def test_predictions_match_the_training_preprocessing(synth_run: Path, images: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "pred.csv"
    assert main(["predict", "--model", str(synth_run), str(images), "--out", str(out), "--batch-size", "2"]) == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == ["image_id", "path", *CLASSES, "predicted", "ood_msp", "ood_energy",
                                   "ood_mahalanobis", "status", "error"]
    np.testing.assert_allclose(table["ood_msp"], 1 - table[list(CLASSES)].max(axis=1), atol=1e-9)
    assert (table["ood_mahalanobis"] > 0).all()
    assert list(table["image_id"]) == ["a_lesion", "b_lesion", "c_lesion"]
    assert (table["status"] == "ok").all() and (table["error"] == "").all()
    probs = table[list(CLASSES)].to_numpy(dtype=float)
    np.testing.assert_allclose(probs, _expected(synth_run, [Path(p) for p in table["path"]]), atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert list(table["predicted"]) == [CLASSES[k] for k in probs.argmax(axis=1)]
    summary = capsys.readouterr().out
    assert "3 ok, 0 failed" in summary and "images/s" in summary


def test_csv_list_resolves_relative_paths_and_bare_ids(synth_run: Path, images: Path, tmp_path: Path) -> None:
    listing = images / "list.csv"
    listing.write_text("image,label\nsub/c_lesion.tif,nv\nb_lesion,mel\n")  # 'b_lesion' has no suffix: found as .jpg
    out = tmp_path / "pred.csv"
    args = ["predict", "--model", str(synth_run), str(listing), "--out", str(out), "--fold", "2", "--tta", "2"]
    assert main(args) == 0
    table = pd.read_csv(out)
    assert [Path(p) for p in table["path"]] == [images / "sub" / "c_lesion.tif", images / "b_lesion.jpg"]
    expected = _expected(synth_run, [Path(p) for p in table["path"]], folds=[2], views=2)
    np.testing.assert_allclose(table[list(CLASSES)].to_numpy(dtype=float), expected, atol=1e-6)


def test_bad_images_are_error_rows_and_odd_modes_succeed(
    synth_run: Path, bad_images: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "pred.csv"
    missing = tmp_path / "missing.jpg"
    assert main(["predict", "--model", str(synth_run), str(bad_images), str(missing), "--out", str(out)]) == 1
    table = pd.read_csv(out, keep_default_na=False).set_index("image_id")
    assert set(table.index[table["status"] == "ok"]) == {"ok", "gray", "gray16", "alpha", "cmyk"}
    for name, reason in {
        "not_image": "not a supported image (accepted: JPEG, PNG, TIFF, BMP, WEBP)",
        "truncated": "truncated",
        "bomb": "too many pixels",
        "missing": "no such file",
    }.items():
        assert table.loc[name, "status"] == "error"
        assert reason in table.loc[name, "error"] and "\n" not in table.loc[name, "error"]
        assert table.loc[name, "predicted"] == "" and table.loc[name, "mel"] == ""
    ok = table[table["status"] == "ok"]
    probs = ok[list(CLASSES)].to_numpy(dtype=float)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert "4 failed" in capsys.readouterr().out


def test_pillow_bomb_limit_and_max_pixels_cap(synth_run: Path, tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "sizes"
    folder.mkdir()
    Image.fromarray(_rgb(5, 120, 160)).save(folder / "big.png")  # 19,200 pixels
    Image.fromarray(_rgb(6, 60, 80)).save(folder / "small.png")  # 4,800 pixels
    out = tmp_path / "pred.csv"
    args = ["predict", "--model", str(synth_run), str(folder), "--out", str(out)]
    assert main([*args, "--max-pixels", "10000"]) == 1
    table = pd.read_csv(out, keep_default_na=False).set_index("image_id")
    assert table.loc["small", "status"] == "ok"
    assert table.loc["big", "error"] == "image is 160 x 120 = 19,200 pixels; the limit is 10,000"

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 15_000)  # big.png is over it but under 2x: Pillow only warns
    assert main(args) == 1
    table = pd.read_csv(out, keep_default_na=False).set_index("image_id")
    assert table.loc["small", "status"] == "ok"
    assert "DecompressionBomb" in table.loc["big", "error"]


def test_isic2019_format(synth_run: Path, bad_images: Path, tmp_path: Path, capsys) -> None:
    crossderm_csv, isic_csv = tmp_path / "pred.csv", tmp_path / "isic.csv"
    base = ["predict", "--model", str(synth_run), str(bad_images), "--fold", "0", "--tta", "1"]
    assert main([*base, "--out", str(crossderm_csv)]) == 1
    capsys.readouterr()
    assert main([*base, "--out", str(isic_csv), "--format", "isic2019"]) == 1
    stderr = capsys.readouterr().err
    assert all(f"{name}: " in stderr for name in ("not_image.jpg", "truncated.jpg", "bomb.png"))
    assert stderr.count("failed: ") == 3
    ours = pd.read_csv(crossderm_csv)
    ours = ours[ours["status"] == "ok"].set_index("image_id")
    isic = pd.read_csv(isic_csv).set_index("image")
    assert list(isic.columns) == list(ISIC2019_COLUMNS)
    assert list(isic.index) == list(ours.index)
    for column, cls in {"MEL": "mel", "NV": "nv", "BCC": "bcc", "AK": "akiec", "BKL": "bkl", "DF": "df",
                        "VASC": "vasc"}.items():
        np.testing.assert_allclose(isic[column], ours[cls])
    assert (isic[["SCC", "UNK"]] == 0.0).all().all()


def _copy_run(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoint"))
    return copy


def test_tampered_weights_are_refused(synth_run: Path, images: Path, tmp_path: Path, capsys) -> None:
    run = _copy_run(synth_run, tmp_path)
    weights = run / "fold_3" / "best.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    out = tmp_path / "pred.csv"
    assert main(["predict", "--model", str(run), str(images), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "sha256 does not match" in err and "fold_3" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_model_card_naming_another_architecture_is_refused(
    synth_run: Path, images: Path, tmp_path: Path, capsys
) -> None:
    run = _copy_run(synth_run, tmp_path)
    card_path = run / "fold_1" / "model.json"
    card = json.loads(card_path.read_text())
    card["model"] = "test_convnext"
    card_path.write_text(json.dumps(card))
    assert main(["predict", "--model", str(run), str(images), "--out", str(tmp_path / "p.csv"), "--fold", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not fit test_convnext" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--backend", "onnx"], "needs --onnx-model"),
        (["--onnx-model", "x.onnx"], "needs --backend onnx"),
        (["--batch-size", "0"], "--batch-size"),
        (["--max-pixels", "0"], "--max-pixels"),
    ],
)
def test_usage_errors_exit_2(synth_run: Path, images: Path, tmp_path: Path, capsys, extra, message) -> None:
    args = ["predict", "--model", str(synth_run), str(images), "--out", str(tmp_path / "p.csv"), *extra]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_bad_lists_and_empty_folders_exit_2(tmp_path: Path, capsys) -> None:
    listing = tmp_path / "list.csv"
    listing.write_text("filename\na.jpg\n")
    (tmp_path / "empty").mkdir()
    cases = (
        (listing, "needs a column named one of path, image, image_id"),
        (tmp_path / "empty", "holds no images"),
        (tmp_path / "absent.csv", "no such image list"),
    )
    for target, message in cases:
        assert main(["predict", "--model", str(tmp_path), str(target), "--out", str(tmp_path / "p.csv")]) == 2
        assert message in capsys.readouterr().err


def test_calibrated_predictions_apply_the_fold_temperatures(synth_run: Path, images: Path, tmp_path: Path) -> None:
    plain, calibrated = tmp_path / "plain.csv", tmp_path / "calibrated.csv"
    assert main(["predict", "--model", str(synth_run), str(images), "--out", str(plain)]) == 0
    assert main(["predict", "--model", str(synth_run), str(images), "--out", str(calibrated), "--calibrated"]) == 0
    paths = [Path(p) for p in pd.read_csv(plain)["path"]]
    ensemble = Ensemble(synth_run, calibrated=True)
    pixels = np.stack([np.asarray(load_image(p, ensemble.image_size)) for p in paths])
    np.testing.assert_allclose(pd.read_csv(calibrated)[list(CLASSES)], ensemble.predict(pixels), atol=1e-6)
    temperatures = json.loads((synth_run / "calibration.json").read_text())["temperature"]
    if any(abs(t - 1) > 0.05 for t in temperatures.values()):
        assert not np.allclose(pd.read_csv(plain)[list(CLASSES)], pd.read_csv(calibrated)[list(CLASSES)], atol=1e-4)
