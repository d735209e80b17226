"""``crossderm prepare`` end to end: real sample, synthetic download, bad inputs, atomic output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from crossderm.cli import main
from crossderm.datafolder import load_dataset
from crossderm.imaging import load_image


@pytest.fixture(scope="module")
def real_prepared(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("real") / "prepared"
    code = main(
        [
            "prepare",
            "--ham",
            str(shared_data / "HAM10000"),
            "--isic",
            str(shared_data / "ISIC2019"),
            "--out",
            str(out),
            "--image-size",
            "32",
            "--allow-missing",
        ]
    )
    assert code == 0
    return out


def test_real_sample_manifest_and_audit(real_prepared: Path) -> None:
    data = load_dataset(real_prepared)
    manifest, info = data.manifest, data.info
    assert len(manifest) == 7501 + 2097 == info["images"]
    cache = np.load(real_prepared / info["cache_file"], mmap_mode="r")
    assert cache.shape == (len(manifest), 32, 32, 3) and cache.dtype == np.uint8
    assert manifest["cache_index"].tolist() == list(range(len(manifest)))
    assert manifest.groupby("lesion_group")["fold"].nunique().max() == 1
    audit = json.loads((real_prepared / "audit.json").read_text())
    assert audit["sources"]["isic"]["overlap_removed"]["ham_images_removed"] == 10015
    assert audit["labelled_images"]["isic"]["total"] == 15316
    assert audit["missing_images"]["per_source"] == {"isic": 15316 - 2097, "ham": 10015 - 7501}
    assert audit["images"]["ham"]["nv"] == 5027 and audit["images"]["isic"]["mel"] == 410
    assert audit["lesions"]["ham"]["lesions"] == 5590
    dup = audit["near_duplicates"]
    assert dup["pairs"] > 0 and all(e["correlation"] >= 0.95 for e in dup["examples"])
    assert "removed 10015 HAM10000 images from ISIC 2019" in (real_prepared / "audit.md").read_text()


def test_cache_pixels_are_the_decoded_images(real_prepared: Path) -> None:
    data = load_dataset(real_prepared)
    manifest, info = data.manifest, data.info
    cache = np.load(real_prepared / info["cache_file"], mmap_mode="r")
    for row in manifest.sample(5, random_state=0).itertuples():
        expected = np.asarray(load_image(row.path, 32))
        assert np.array_equal(cache[row.cache_index], expected)


def test_missing_images_fail_without_allow_missing(shared_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "prepared"
    code = main(["prepare", "--ham", str(shared_data / "HAM10000"), "--out", str(out), "--image-size", "16"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "2514 of 10015 labelled images have no image file" in err and "--allow-missing" in err
    assert not out.exists()


def test_image_loading_handles_modes_and_aspect(tmp_path: Path) -> None:
    rgb = np.zeros((150, 200, 3), dtype=np.uint8)
    rgb[:, :10] = 255  # inside the left 1/8 that the centre square crops away
    for mode, image in {
        "RGB": Image.fromarray(rgb),
        "L": Image.fromarray(rgb[..., 0]),
        "RGBA": Image.fromarray(np.dstack([rgb, np.full((150, 200), 255, np.uint8)])),
        "CMYK": Image.fromarray(rgb).convert("CMYK"),
        "I;16": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
    }.items():
        path = tmp_path / f"{mode.replace(';', '')}.{'jpg' if mode in ('RGB', 'L', 'CMYK') else 'png'}"
        image.save(path)
        loaded = np.asarray(load_image(path, 30))
        assert loaded.shape == (30, 30, 3), mode
        assert loaded.max() < 40, mode  # the white strip is gone


@pytest.fixture
def synth_copy(synth_raw: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "raw"
    shutil.copytree(synth_raw, copy)
    return copy


def _prepare(raw: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "prepare",
            "--ham",
            str(raw / "HAM10000"),
            "--isic",
            str(raw / "ISIC2019"),
            "--out",
            str(out),
            "--image-size",
            "16",
            "--workers",
            "1",
            *extra,
        ]
    )


def test_synthetic_download_prepares_like_the_real_one(synth_copy: Path, tmp_path: Path) -> None:
    assert _prepare(synth_copy, tmp_path / "p") == 0
    manifest = load_dataset(tmp_path / "p").manifest
    ham_ids = set(pd.read_csv(synth_copy / "HAM10000" / "HAM10000_metadata.csv")["image_id"])
    isic = manifest[manifest["source"] == "isic"]
    assert not set(isic["image_id"].str.removesuffix("_downsampled")) & ham_ids
    assert set(isic["site"]) == {"bcn", "msk", "archive"}  # the ISIC archive: images without a lesion id
    assert set(manifest.loc[manifest["source"] == "ham", "site"]) >= {"vidir_molemax", "rosendahl"}
    for _, part in manifest.groupby("source"):
        assert sorted(part["fold"].unique()) == [0, 1, 2, 3, 4]


def test_truncated_image_is_one_line_error_and_nothing_written(synth_copy: Path, tmp_path: Path, capsys) -> None:
    victim = sorted((synth_copy / "ISIC2019" / "ISIC_2019_Training_Input").glob("*.jpg"))[-1]
    victim.write_bytes(victim.read_bytes()[:300])
    out = tmp_path / "p"
    assert _prepare(synth_copy, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and victim.name in err and "cannot decode image" in err
    assert not out.exists() and not list(tmp_path.glob(".p.staging-*"))


def test_existing_output_is_kept_unless_overwrite(synth_copy: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "p"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _prepare(synth_copy, out) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert _prepare(synth_copy, out, "--overwrite") == 0
    assert (out / "manifest.csv").is_file() and not (out / "keep.txt").exists()


def test_two_labels_in_ground_truth_names_the_row(synth_copy: Path, tmp_path: Path, capsys) -> None:
    truth = synth_copy / "ISIC2019" / "ISIC_2019_Training_GroundTruth.csv"
    lines = truth.read_bytes().split(b"\r\n")
    fields = lines[5].split(b",")
    fields[1:3] = [b"1.0", b"1.0"]
    lines[5] = b",".join(fields)
    truth.write_bytes(b"\r\n".join(lines))
    assert _prepare(synth_copy, tmp_path / "p") == 2
    err = capsys.readouterr().err
    assert "ISIC_2019_Training_GroundTruth.csv:6:" in err and "labels (MEL, NV" in err
