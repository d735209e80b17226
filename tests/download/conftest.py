"""Fixtures: a tiny synthetic download zipped as the publishers ship it, and local publishers serving it."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fake_publisher import RECORD_PATH, Archives, Publisher, Served, dataverse_record, md5, zip_folder

import crossderm.download.http as download_http


@pytest.fixture(scope="session")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Archives:
    from crossderm.synth.generator import generate

    raw = tmp_path_factory.mktemp("publisher") / "raw"
    generate(raw, ham_lesions=14, isic_lesions=14, image_scale=0.25)
    ham, isic = raw / "HAM10000", raw / "ISIC2019"
    csv = (ham / "HAM10000_metadata.csv").read_bytes()
    return Archives(
        raw=raw,
        ham_part_1=zip_folder(ham / "HAM10000_images_part_1"),  # JPEGs at the top of the zip
        ham_part_2=zip_folder(ham / "HAM10000_images_part_2", "HAM10000_images_part_2/"),  # inside a folder
        ham_csv=csv,
        ham_tab=csv.replace(b",", b"\t"),  # Dataverse's ingested conversion: not what prepare wants
        isic_input=zip_folder(isic / "ISIC_2019_Training_Input", "ISIC_2019_Training_Input/",
                              {"LICENSE.txt": b"CC-BY-NC\n", "ATTRIBUTION.txt": b"ISIC 2019\n"}),
        isic_truth=(isic / "ISIC_2019_Training_GroundTruth.csv").read_bytes(),
        isic_meta=(isic / "ISIC_2019_Training_Metadata.csv").read_bytes(),
    )


@pytest.fixture(autouse=True)
def no_retry_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download_http, "RETRY_WAIT_S", 0.0)


@pytest.fixture
def dataverse(archives: Archives, monkeypatch: pytest.MonkeyPatch) -> Iterator[Publisher]:
    """Harvard Dataverse for HAM10000; part 2 is served through a redirect, as Harvard's S3 direct download."""
    server = Publisher()
    server.routes = {
        RECORD_PATH: Served(json.dumps(dataverse_record(archives)).encode(), content_type="application/json"),
        "/api/access/datafile/1": Served(archives.ham_part_1),
        "/api/access/datafile/2": Served(redirect_to="/s3/dvn-bucket/part2"),
        "/s3/dvn-bucket/part2": Served(archives.ham_part_2),
        "/api/access/datafile/3": Served(archives.ham_tab),
        "/api/access/datafile/3?format=original": Served(archives.ham_csv),
    }
    monkeypatch.setenv("CROSSDERM_HAM10000_URL", server.url)
    yield server
    server.close()


@pytest.fixture
def isic_bucket(archives: Archives, monkeypatch: pytest.MonkeyPatch) -> Iterator[Publisher]:
    """The ISIC challenge's S3 bucket: plain-MD5 ETags on the CSVs, a multipart ETag on the zip."""
    server = Publisher()
    server.routes = {
        "/2019/ISIC_2019_Training_Input.zip": Served(archives.isic_input, etag=f'"{md5(b"parts")}-3"'),
        "/2019/ISIC_2019_Training_GroundTruth.csv": Served(archives.isic_truth, etag=f'"{md5(archives.isic_truth)}"'),
        "/2019/ISIC_2019_Training_Metadata.csv": Served(archives.isic_meta, etag=f'"{md5(archives.isic_meta)}"'),
    }
    monkeypatch.setenv("CROSSDERM_ISIC2019_URL", f"{server.url}/2019")
    yield server
    server.close()
