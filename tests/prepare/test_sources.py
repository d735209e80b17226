"""The official CSVs read to the published figures (real files from ../shared/data)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from crossderm.errors import CrossdermError
from crossderm.labels import DEFAULT_ISIC_TO_HAM, load_label_map
from crossderm.prepare.sources import read_ham10000, read_isic2019


def test_ham10000_counts(shared_data: Path) -> None:
    ham, report = read_ham10000(shared_data / "HAM10000")
    assert len(ham) == report.rows == 10015
    assert ham["lesion_id"].nunique() == 7470
    assert ham["label"].value_counts().to_dict() == {
        "nv": 6705,
        "mel": 1113,
        "bkl": 1099,
        "bcc": 514,
        "akiec": 327,
        "vasc": 142,
        "df": 115,
    }
    assert (ham["path"] != "").sum() == 7501
    assert set(ham["site"]) == {"unknown"}


def test_ham10000_dataset_column_gives_sites(shared_data: Path) -> None:
    ham, _ = read_ham10000(shared_data / "extra" / "HAM10000_metadata_with_dataset.csv")
    assert ham["site"].value_counts().to_dict() == {
        "vidir_molemax": 3954,
        "vidir_modern": 3363,
        "rosendahl": 2259,
        "vienna_dias": 439,
    }


def test_isic2019_removes_ham_and_harmonises(shared_data: Path) -> None:
    ham, _ = read_ham10000(shared_data / "HAM10000")
    isic, report = read_isic2019(shared_data / "ISIC2019", DEFAULT_ISIC_TO_HAM, set(ham["image_id"]))
    assert report.rows == 25331
    assert report.removed == {
        "ham_images_removed": 10015,
        "by_ham_image_id": 10015,
        "by_ham_lesion_prefix": 10015,
        "by_ham_id_range": 10015,
    }
    assert len(isic) == 15316
    assert isic["label"].value_counts().to_dict() == {
        "nv": 6170,
        "mel": 3409,
        "bcc": 2809,
        "bkl": 1525,
        "akiec": 1168,
        "df": 124,
        "vasc": 111,
    }
    assert not set(isic["image_id"]) & set(ham["image_id"])
    assert isic["site"].value_counts().to_dict() == {"bcn": 12413, "archive": 2084, "msk": 819}
    assert (isic["path"] != "").sum() == 2097
    downsampled = isic[isic["image_id"].str.endswith("_downsampled") & (isic["path"] != "")]
    assert len(downsampled) == 1521


def test_isic_removal_without_ham_metadata_still_complete(shared_data: Path) -> None:
    isic, report = read_isic2019(shared_data / "ISIC2019", DEFAULT_ISIC_TO_HAM, None)
    assert report.removed["ham_images_removed"] == 10015 and report.removed["by_ham_image_id"] == 0
    assert len(isic) == 15316


def test_label_map_override_drops_scc(shared_data: Path, tmp_path: Path) -> None:
    override = tmp_path / "map.yaml"
    override.write_text("SCC: null\n")
    isic, report = read_isic2019(shared_data / "ISIC2019", load_label_map(override))
    assert report.dropped_labels == {"SCC": 628 - 197}
    assert (isic["label"] == "akiec").sum() == 1168 - (628 - 197)


def test_label_map_rejects_unknown_class(tmp_path: Path) -> None:
    override = tmp_path / "map.yaml"
    override.write_text("SCC: carcinoma\n")
    with pytest.raises(CrossdermError, match="carcinoma"):
        load_label_map(override)


@pytest.mark.parametrize(
    ("line", "replacement", "message"),
    [
        (
            "ISIC_0000001,0.0,1.0,",
            "ISIC_0000001,1.0,1.0,",
            r"ISIC_2019_Training_GroundTruth.csv:3: .* has 2 labels \(MEL, NV\)",
        ),
        ("ISIC_0000001,0.0,1.0,", "ISIC_0000001,0.0,0.0,", r"GroundTruth.csv:3: .* has no label"),
        ("ISIC_0000001,0.0,1.0,", "ISIC_0000001,0.0,yes,", r"GroundTruth.csv:3: NV='yes' is not 0 or 1"),
        (
            "ISIC_0000001,0.0,1.0,",
            "ISIC_0000000,0.0,1.0,",
            r"GroundTruth.csv:3: duplicate image 'ISIC_0000000' \(first at line 2\)",
        ),
    ],
)
def test_bad_isic_ground_truth_names_the_line(
    shared_data: Path, tmp_path: Path, line: str, replacement: str, message: str
) -> None:
    isic = tmp_path / "ISIC2019"
    isic.mkdir()
    shutil.copy(shared_data / "ISIC2019" / "ISIC_2019_Training_Metadata.csv", isic)
    truth = (shared_data / "ISIC2019" / "ISIC_2019_Training_GroundTruth.csv").read_text()
    assert line in truth
    (isic / "ISIC_2019_Training_GroundTruth.csv").write_text(truth.replace(line, replacement, 1))
    with pytest.raises(CrossdermError, match=message):
        read_isic2019(isic, DEFAULT_ISIC_TO_HAM)


def test_bad_ham_metadata(tmp_path: Path) -> None:
    (tmp_path / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx\nHAM_1,ISIC_1,nv\nHAM_2,ISIC_2,melanoma\n")
    with pytest.raises(CrossdermError, match=r"HAM10000_metadata.csv:3: unknown dx 'melanoma'"):
        read_ham10000(tmp_path)
    (tmp_path / "HAM10000_metadata.csv").write_text("lesion,image_id,dx\nHAM_1,ISIC_1,nv\n")
    with pytest.raises(CrossdermError, match=r"HAM10000_metadata.csv:1: missing column\(s\) lesion_id"):
        read_ham10000(tmp_path)
