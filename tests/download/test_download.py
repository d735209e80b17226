"""``crossderm download`` against local publishers: resume, verification, refusal, and the layout prepare reads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from fake_publisher import RECORD_PATH, Archives, Publisher, Served, dataverse_record, md5

from crossderm.cli import main
from crossderm.download import DATASET_NAMES
from crossderm.download.catalog import DATASETS
from crossderm.download.fetch import MARKER, WORK_DIR, download_dataset

WORK = f"{WORK_DIR}/ham10000"


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(["download", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def image_names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_ham10000_resumes_a_dropped_connection_verifies_md5_and_unpacks(
    dataverse: Publisher, archives: Archives, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    drop = len(archives.ham_part_1) // 2
    dataverse.routes["/api/access/datafile/1"] = Served(archives.ham_part_1, drop_at=drop, drops=1)
    code, out, err = run(capsys, "ham10000", "--out", str(tmp_path))
    assert code == 0, err
    assert dataverse.gets("/api/access/datafile/1") == [None, f"bytes={drop}-"]  # resumed, not restarted
    assert f"connection dropped at byte {drop:,}" in out
    summary = [line.strip() for line in out.splitlines() if line.startswith("  HAM10000_")]
    assert [line.split(" (")[0] for line in summary] == [
        "HAM10000_images_part_1.zip", "HAM10000_images_part_2.zip", "HAM10000_metadata.csv"]
    assert all("): MD5 verified (Dataverse file metadata)" in line for line in summary)
    count = len(image_names(archives.raw / "HAM10000" / "HAM10000_images_part_1"))
    assert summary[0].endswith(f"; CRC-32 of its {count} files checked while unpacking")
    assert "licence: CC BY-NC 4.0, http://creativecommons.org/licenses/by-nc/4.0 (as stated on the Dataverse" in out
    assert "Sci Data 5, 180161 (2018)" in out and "https://doi.org/10.7910/DVN/DBW86T" in out
    ham = tmp_path / "HAM10000"
    assert (ham / "HAM10000_metadata.csv").read_bytes() == archives.ham_csv  # the original, not the .tab
    assert dataverse.gets("/api/access/datafile/3") == []
    for part in ("HAM10000_images_part_1", "HAM10000_images_part_2"):
        assert image_names(ham / part) == image_names(archives.raw / "HAM10000" / part)
    assert not any(p for _, p, _ in dataverse.requests if p.endswith("/4"))  # segmentations: not fetched
    assert not (tmp_path / WORK_DIR).exists()  # downloads removed after unpacking
    marker = json.loads((ham / MARKER).read_text())
    checksums = {entry["name"]: entry["checksum"]["value"] for entry in marker["files"]}
    assert checksums["HAM10000_metadata.csv"] == md5(archives.ham_csv)


def test_resume_keeps_the_range_across_dataverse_redirect_to_s3(
    dataverse: Publisher, archives: Archives, tmp_path: Path
) -> None:
    drop = len(archives.ham_part_2) // 2
    dataverse.routes["/s3/dvn-bucket/part2"] = Served(archives.ham_part_2, drop_at=drop, drops=1)
    download_dataset("ham10000", tmp_path, echo=lambda _: None)
    assert dataverse.gets("/api/access/datafile/2") == [None, f"bytes={drop}-"]
    assert dataverse.gets("/s3/dvn-bucket/part2") == [None, f"bytes={drop}-"]


def test_isic2019_says_what_s3_lets_it_verify(
    isic_bucket: Publisher, archives: Archives, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, out, err = run(capsys, "isic2019", "--out", str(tmp_path))
    assert code == 0, err
    lines = {line.split(" (")[0].strip(): line for line in out.splitlines() if line.startswith("  ISIC_")}
    assert "MD5 verified (S3 ETag of a single-part upload" in lines["ISIC_2019_Training_GroundTruth.csv"]
    assert "MD5 verified (S3 ETag of a single-part upload" in lines["ISIC_2019_Training_Metadata.csv"]
    zip_line = lines["ISIC_2019_Training_Input.zip"]
    assert "no checksum published, size checked only" in zip_line and "multipart-upload ETag" in zip_line
    assert "CC BY-NC 4.0" in out and "BCN_20000" in out and "arXiv:1710.05006" in out
    isic = tmp_path / "ISIC2019"
    images = isic / "ISIC_2019_Training_Input"
    assert sorted(p.name for p in images.glob("*.jpg")) == sorted(
        p.name for p in (archives.raw / "ISIC2019" / "ISIC_2019_Training_Input").glob("*.jpg"))
    assert (images / "LICENSE.txt").is_file()  # stripped one folder level, not two
    assert (isic / "ISIC_2019_Training_GroundTruth.csv").read_bytes() == archives.isic_truth


def test_prepare_reads_the_downloaded_folders(
    dataverse: Publisher, isic_bucket: Publisher, archives: Archives, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, out, err = run(capsys, "ham10000", "isic2019", "--out", str(tmp_path / "data"))
    assert code == 0, err
    assert f"next: crossderm prepare --ham {tmp_path / 'data' / 'HAM10000'} --isic" in out
    manifests = []
    for source, label in ((tmp_path / "data", "downloaded"), (archives.raw, "synthetic")):
        prepared = tmp_path / f"prepared_{label}"
        assert main(["prepare", "--ham", str(source / "HAM10000"), "--isic", str(source / "ISIC2019"),
                     "--out", str(prepared), "--image-size", "16", "--workers", "1", "--folds", "2"]) == 0
        manifests.append(pd.read_csv(prepared / "manifest.csv", dtype=str, keep_default_na=False))
    columns = ["image_id", "source", "label", "lesion_id", "fold", "phash"]
    downloaded, synthetic = (m[columns].sort_values(["source", "image_id"]).reset_index(drop=True) for m in manifests)
    assert len(downloaded) > 0
    pd.testing.assert_frame_equal(downloaded, synthetic)


def test_running_again_after_success_does_nothing(
    dataverse: Publisher, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert run(capsys, "ham10000", "--out", str(tmp_path))[0] == 0
    before = sorted((p, p.stat().st_mtime_ns) for p in (tmp_path / "HAM10000").rglob("*"))
    dataverse.requests.clear()
    code, out, _ = run(capsys, "ham10000", "--out", str(tmp_path))
    assert code == 0
    assert dataverse.requests == []  # not even the metadata record
    assert "already downloaded and verified" in out and "MD5 verified" in out and "licence:" in out
    assert sorted((p, p.stat().st_mtime_ns) for p in (tmp_path / "HAM10000").rglob("*")) == before


def test_an_interrupted_run_resumes_on_the_next_run(
    dataverse: Publisher, archives: Archives, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    drop = len(archives.ham_part_1) // 3
    dataverse.routes["/api/access/datafile/1"] = Served(archives.ham_part_1, drop_at=drop, drops=1)
    code, _, err = run(capsys, "ham10000", "--out", str(tmp_path), "--retries", "0")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"HAM10000_images_part_1.zip: connection dropped at byte {drop:,}" in err and "run again to resume" in err
    assert (tmp_path / WORK / "HAM10000_images_part_1.zip.part").stat().st_size == drop
    assert not (tmp_path / "HAM10000").exists()
    code, out, err = run(capsys, "ham10000", "--out", str(tmp_path))
    assert code == 0, err
    assert "resuming at" in out
    assert dataverse.gets("/api/access/datafile/1") == [None, f"bytes={drop}-"]
    assert image_names(tmp_path / "HAM10000" / "HAM10000_images_part_1") == image_names(
        archives.raw / "HAM10000" / "HAM10000_images_part_1")


def test_a_server_that_ignores_range_restarts_the_file_cleanly(
    dataverse: Publisher, archives: Archives, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    drop = len(archives.ham_part_1) // 2
    dataverse.routes["/api/access/datafile/1"] = Served(archives.ham_part_1, drop_at=drop, drops=1, ignore_range=True)
    code, out, err = run(capsys, "ham10000", "--out", str(tmp_path), "--keep-archives")
    assert code == 0, err
    assert "ignored the request to resume" in out and "(HTTP 200, not 206)" in out
    assert (tmp_path / WORK / "HAM10000_images_part_1.zip").read_bytes() == archives.ham_part_1  # nothing doubled


def test_a_wrong_checksum_is_one_line_and_leaves_no_file(
    dataverse: Publisher, archives: Archives, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    wrong = "0" * 32
    record = dataverse_record(archives, md5_part_2=wrong)
    dataverse.routes[RECORD_PATH] = Served(json.dumps(record).encode())
    code, _, err = run(capsys, "ham10000", "--out", str(tmp_path))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "HAM10000_images_part_2.zip: checksum mismatch" in err
    assert f"MD5 expected {wrong} (Dataverse file metadata), got {md5(archives.ham_part_2)}" in err
    assert f"{dataverse.url}/api/access/datafile/2" in err
    assert not (tmp_path / "HAM10000").exists()
    assert not list((tmp_path / WORK).glob("HAM10000_images_part_2.zip*"))  # neither final file nor .part


@pytest.mark.parametrize("which", ["dataverse record", "s3 object"])
def test_http_404_names_the_url(
    which: str, dataverse: Publisher, isic_bucket: Publisher, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    if which == "dataverse record":
        del dataverse.routes[RECORD_PATH]
        dataset, url = "ham10000", f"{dataverse.url}/api/datasets/:persistentId/?persistentId=doi%3A10.7910"
    else:
        del isic_bucket.routes["/2019/ISIC_2019_Training_Metadata.csv"]
        dataset, url = "isic2019", f"{isic_bucket.url}/2019/ISIC_2019_Training_Metadata.csv"
    code, _, err = run(capsys, dataset, "--out", str(tmp_path))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert url in err and "HTTP 404" in err


def test_transient_503s_are_retried(dataverse: Publisher, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dataverse.routes[RECORD_PATH].fail_first = 2
    dataverse.routes["/s3/dvn-bucket/part2"].fail_first = 1
    code, out, err = run(capsys, "ham10000", "--out", str(tmp_path))
    assert code == 0, err
    assert out.count("HTTP 503") == 3 and len(dataverse.gets(RECORD_PATH)) == 3


def test_a_malicious_zip_member_is_refused(
    dataverse: Publisher, archives: Archives, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("ISIC_0024306.jpg", b"jpeg")
        archive.writestr("../../escaped.txt", b"owned")
    body = evil.read_bytes()
    record = dataverse_record(archives)
    record["data"]["latestVersion"]["files"][0]["dataFile"].update(
        filesize=len(body), md5=md5(body), checksum={"type": "MD5", "value": md5(body)})
    dataverse.routes[RECORD_PATH] = Served(json.dumps(record).encode())
    dataverse.routes["/api/access/datafile/1"] = Served(body)
    out_dir = tmp_path / "out"
    code, _, err = run(capsys, "ham10000", "--out", str(out_dir))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "refusing to unpack member '../../escaped.txt'" in err
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not (out_dir / "HAM10000").exists() and not list(out_dir.glob(".HAM10000*"))  # no staging left


def test_too_little_disk_space_stops_before_downloading(
    dataverse: Publisher, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=10_000_000))
    code, _, err = run(capsys, "ham10000", "--out", str(tmp_path))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "not enough free disk space for ham10000" in err and "10.0 MB free" in err and "to download" in err
    assert [path for _, path, _ in dataverse.requests] == [RECORD_PATH]  # asked for sizes, fetched nothing


def test_a_complete_part_file_is_verified_without_fetching_it_again(
    dataverse: Publisher, archives: Archives, tmp_path: Path
) -> None:
    work = tmp_path / WORK
    work.mkdir(parents=True)
    (work / "HAM10000_images_part_1.zip.part").write_bytes(archives.ham_part_1)  # crashed before the rename
    lines: list[str] = []
    result = download_dataset("ham10000", tmp_path, echo=lines.append)
    assert dataverse.gets("/api/access/datafile/1") == []
    assert result.files[0].verified.startswith("MD5 verified (Dataverse file metadata); CRC-32 of its ")


def test_a_record_without_a_needed_file_lists_what_it_has(
    dataverse: Publisher, archives: Archives, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    record = dataverse_record(archives)
    del record["data"]["latestVersion"]["files"][1]
    dataverse.routes[RECORD_PATH] = Served(json.dumps(record).encode())
    code, _, err = run(capsys, "ham10000", "--out", str(tmp_path))
    assert code == 2
    assert "the Dataverse record has no file HAM10000_images_part_2.zip (it lists: HAM10000_images_part_1.zip" in err


def test_an_existing_foreign_folder_is_not_replaced(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "HAM10000").mkdir()
    (tmp_path / "HAM10000" / "mine.txt").write_text("keep")
    code, _, err = run(capsys, "ham10000", "--out", str(tmp_path))
    assert code == 2 and "was not written by crossderm download (pass --overwrite" in err
    assert (tmp_path / "HAM10000" / "mine.txt").read_text() == "keep"


def test_the_catalog_matches_the_names_help_reads_and_help_stays_light() -> None:
    assert tuple(DATASETS) == DATASET_NAMES
    for spec in DATASETS.values():
        assert spec.base_url.startswith("https://") and spec.base_url_env.startswith("CROSSDERM_")
    probe = "import sys, crossderm.cli.download; print(any(m.startswith('pandas') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "False\n"
