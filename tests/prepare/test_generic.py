"""Your own dataset as a source (``prepare --source NAME=DIR``), sites files, harmonised metadata, and an
external (test-only) source predicted by every fold model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crossderm.cli import main
from crossderm.datafolder import load_dataset
from crossderm.labels import CLASSES
from crossderm.prepare.generic import read_generic
from crossderm.prepare.metadata import read_sites

CLINIC_MAP = "MEL: mel\nNEV: nv\nBCC: bcc\nSK: bkl\nAK: akiec\nDF: df\nVASC: vasc\nOTHER: null\n"
OUR_LABEL = {"mel": "MEL", "nv": "NEV", "bcc": "BCC", "bkl": "SK", "akiec": "AK", "df": "DF", "vasc": "VASC"}


def clinic_from_synthetic(raw: Path, out: Path, n: int = 60) -> pd.DataFrame:
    """A third dataset in the generic layout, made of the synthetic BCN-like images under new names."""
    truth = pd.read_csv(raw / "ISIC2019" / "ISIC_2019_Training_GroundTruth.csv")
    bcn = truth[truth["image"].str[5:12].astype(int) >= 53000].head(n)
    images = out / "photos" / "2024"
    images.mkdir(parents=True)
    rows = []
    for k, (_, row) in enumerate(bcn.iterrows()):
        column = max(("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"), key=lambda c: row[c])
        label = {"NV": "NEV", "BKL": "SK", "SCC": "AK"}.get(column, column)
        name = f"clinic_{k:04d}.jpg"
        shutil.copy(raw / "ISIC2019" / "ISIC_2019_Training_Input" / f"{row['image']}.jpg", images / name)
        rows.append({"image": name if k % 2 else name[:-4], "label": label, "lesion_id": f"P{k // 2}",
                     "site": "ward_a" if k < n // 2 else "ward_b", "age": str(30 + k % 50),
                     "sex": "female" if k % 3 else "male", "anatom_site": "posterior torso" if k % 4 else ""})
    rows.append({"image": "extra.jpg", "label": "OTHER", "lesion_id": "", "site": "", "age": "", "sex": "",
                 "anatom_site": ""})  # mapped to null: dropped and counted
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "labels.csv", index=False)
    (out / "label_map.yaml").write_text(CLINIC_MAP)
    return frame


@pytest.fixture(scope="module")
def clinic(synth_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clinic") / "clinic"
    clinic_from_synthetic(synth_raw, out)
    return out


def test_generic_reader_maps_labels_and_metadata(clinic: Path) -> None:
    table, report = read_generic("clinic", clinic)
    assert len(table) == 60 and report.dropped_labels == {"OTHER": 1}
    assert set(table["label"]) <= set(CLASSES) and (table["path"] != "").all()
    assert set(table["site"]) == {"ward_a", "ward_b"}
    assert set(table["anatom_site"]) == {"torso", ""} and set(table["sex"]) == {"male", "female"}
    assert table["image_id"].str.fullmatch(r"clinic_\d{4}").all()  # with or without the suffix in labels.csv


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.assign(label=f["label"].where(f.index != 3, "SCC")), "labels.csv:5: label 'SCC' is not a label"),
        (lambda f: f.assign(age=f["age"].where(f.index != 2, "old")), "labels.csv:4: age 'old' is not a number"),
        (lambda f: f.assign(sex=f["sex"].where(f.index != 0, "x")), "labels.csv:2: sex 'x' is not male, female"),
        (lambda f: f.assign(anatom_site=f["anatom_site"].where(f.index != 1, "elbow")),
         "labels.csv:3: anatomical site 'elbow' is not one of"),
        (lambda f: pd.concat([f, f.iloc[[0]]]), "duplicate image"),
        (lambda f: f.drop(columns=["label"]), "labels.csv:1: missing column(s) label"),
    ],
)
def test_bad_generic_rows_name_the_line(clinic: Path, tmp_path: Path, edit, message: str,
                                        capsys: pytest.CaptureFixture) -> None:
    copy = tmp_path / "clinic"
    shutil.copytree(clinic, copy)
    edit(pd.read_csv(copy / "labels.csv", dtype=str, keep_default_na=False)).to_csv(copy / "labels.csv", index=False)
    assert main(["prepare", "--source", f"clinic={copy}", "--out", str(tmp_path / "p"), "--image-size", "32"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "p").exists()


def test_source_spec_is_checked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for spec, message in (("Clinic=x", "lower-case NAME"), ("ham=x", "official reader's source"),
                          ("clinic=" + str(tmp_path), "labels.csv: not found")):
        assert main(["prepare", "--source", spec, "--out", str(tmp_path / "p")]) == 2
        assert message in capsys.readouterr().err


def test_shared_lesion_across_sources_is_refused(synth_raw: Path, clinic: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    copy = tmp_path / "clinic"
    shutil.copytree(clinic, copy)
    ham = pd.read_csv(synth_raw / "HAM10000" / "HAM10000_metadata.csv")
    labels = pd.read_csv(copy / "labels.csv", dtype=str, keep_default_na=False)
    labels.loc[0, "lesion_id"] = ham["lesion_id"].iloc[0]
    labels.to_csv(copy / "labels.csv", index=False)
    args = ["prepare", "--ham", str(synth_raw / "HAM10000"), "--source", f"clinic={copy}", "--out",
            str(tmp_path / "p"), "--image-size", "32"]
    assert main(args) == 2
    assert f"lesion {ham['lesion_id'].iloc[0]!r} appears in sources clinic and ham" in capsys.readouterr().err


def test_external_source_is_predicted_by_every_fold_and_never_trained_on(
    synth_raw: Path, clinic: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    assert main(["prepare", "--ham", str(synth_raw / "HAM10000"), "--isic", str(synth_raw / "ISIC2019"),
                 "--source", f"clinic={clinic}", "--out", str(data), "--image-size", "32", "--workers", "1"]) == 0
    audit = json.loads((data / "audit.json").read_text())
    assert audit["sources"]["clinic"]["dropped_unmapped_labels"] == {"OTHER": 1}
    assert set(audit["sites"]) >= {"clinic/ward_a", "clinic/ward_b", "ham/vidir_modern", "isic/bcn"}
    out = tmp_path / "run"
    overrides = ["model=test_efficientnet", "epochs=1", "batch_size=32", "channels_last=false",
                 "train_sources=[ham]", "test_sources=[ham]", "external_sources=[clinic]"]
    assert main(["cv", "--config", "demo_a_ham_only", "--data", str(data), "--out", str(out), "--bootstrap", "50",
                 *[f"--set={o}" for o in overrides]]) == 0
    per_fold = [pd.read_csv(out / f"fold_{k}" / "external_predictions.csv", dtype={"image_id": str})
                for k in range(5)]
    assert all(len(p) == 60 for p in per_fold)
    for k in range(5):  # the fold models never saw a clinic image
        assert not (out / f"fold_{k}" / "predictions.csv").read_text().count("clinic_")
    oof = pd.read_csv(out / "oof_predictions.csv", dtype={"image_id": str}, keep_default_na=False)
    clinic_rows = oof[oof["source"] == "clinic"].set_index("image_id").sort_index()
    mean = pd.concat(per_fold).groupby("image_id")[list(CLASSES)].mean().sort_index()
    np.testing.assert_allclose(clinic_rows[list(CLASSES)].to_numpy(), mean.to_numpy(), atol=1e-12)
    assert (clinic_rows["fold"] == -1).all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sources"]["clinic"]["n"] == 60 and "ham - clinic" in metrics["gaps"]
    assert {"clinic/ward_a", "clinic/ward_b"} <= set(metrics["sites"])
    calibration = json.loads((out / "calibration.json").read_text())
    assert calibration["ensembled_rows_not_calibrated"] == 60 and "clinic" not in calibration["sources"]


def test_sites_file_and_newer_ham_metadata_on_the_real_csvs(shared_data: Path, tmp_path: Path) -> None:
    from crossderm.labels import load_label_map
    from crossderm.prepare.sources import read_ham10000, read_isic2019

    flamby = read_sites(shared_data / "extra" / "flamby_fed_isic2019_train_test_split.csv")
    assert len(flamby) == 23_247
    assert pd.Series(flamby).value_counts().to_dict() == {
        "bcn": 12_413, "vidir_molemax": 3_954, "vidir_modern": 3_363, "rosendahl": 2_259, "msk": 819,
        "vienna_dias": 439}
    ham, _ = read_ham10000(shared_data / "HAM10000", shared_data / "extra" / "HAM10000_metadata_with_dataset.csv")
    by_dataset = ham.set_index("image_id")["site"]
    assert (by_dataset == pd.Series(flamby).reindex(by_dataset.index)).all()  # the two real sources agree
    isic, _ = read_isic2019(shared_data / "ISIC2019", load_label_map(None), set(ham["image_id"]))
    assert isic["site"].value_counts().to_dict() == {"bcn": 12_413, "archive": 2_084, "msk": 819}
    assert ham["anatom_site"].value_counts()["torso"] == 1022 + 2192 + 407 + 1404  # abdomen, back, chest, trunk
    assert (ham["anatom_site"] == "").sum() == 234 and (ham["sex"] == "").sum() == 57


def test_real_images_as_a_generic_source(shared_data: Path, tmp_path: Path) -> None:
    """The shared ISIC sample rewritten into the generic layout prepares with its labels and sites."""
    sample = pd.read_csv(shared_data / "ISIC2019" / "sample_manifest.csv", dtype=str, keep_default_na=False).head(80)
    folder = tmp_path / "isic_as_clinic"
    (folder / "img").mkdir(parents=True)
    for image in sample["image"]:
        shutil.copy(shared_data / "ISIC2019" / "ISIC_2019_Training_Input" / f"{image}.jpg", folder / "img")
    pd.DataFrame({"image": sample["image"], "label": sample["label"], "lesion_id": sample["lesion_id"],
                  "site": sample["center_name"].str.lower()}).to_csv(folder / "labels.csv", index=False)
    (folder / "label_map.yaml").write_text(
        "MEL: mel\nNV: nv\nBCC: bcc\nAK: akiec\nSCC: akiec\nBKL: bkl\nDF: df\nVASC: vasc\n")
    out = tmp_path / "p"
    assert main(["prepare", "--source", f"sample={folder}", "--out", str(out), "--image-size", "32",
                 "--folds", "2", "--workers", "1"]) == 0
    manifest = load_dataset(out).manifest
    expected = sample["label"].map({"MEL": "mel", "NV": "nv", "BCC": "bcc", "BKL": "bkl", "SCC": "akiec"})
    assert manifest.set_index("image_id")["label"].loc[sample["image"]].tolist() == expected.tolist()
    assert set(manifest["site"]) == set(sample["center_name"].str.lower().replace("", "sample"))
