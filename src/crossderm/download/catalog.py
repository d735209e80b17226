"""The one table of what ``crossderm download`` fetches: publishers, URLs, files, licences, citations.

=========  =================================================  ==================================================
dataset    publisher and base URL (override: environment)     files fetched -> where they land in OUT/<folder>/
=========  =================================================  ==================================================
ham10000   Harvard Dataverse, https://dataverse.harvard.edu   HAM10000_images_part_1.zip -> HAM10000_images_part_1/
           dataset doi:10.7910/DVN/DBW86T                     HAM10000_images_part_2.zip -> HAM10000_images_part_2/
           (``CROSSDERM_HAM10000_URL``)                       HAM10000_metadata (.tab, original CSV)
                                                              -> HAM10000_metadata.csv
isic2019   ISIC challenge bucket,                             ISIC_2019_Training_Input.zip -> ISIC_2019_Training_Input/
           https://isic-challenge-data.s3.amazonaws.com/2019  ISIC_2019_Training_GroundTruth.csv
           (``CROSSDERM_ISIC2019_URL``)                       ISIC_2019_Training_Metadata.csv
=========  =================================================  ==================================================

Where these facts come from (checked in public sources, not guessed):

- **Dataverse native API.** ``GET {base}/api/datasets/:persistentId/?persistentId=doi:...`` returns
  ``data.latestVersion.files[].dataFile`` with ``id``, ``filename``, ``filesize``, ``md5`` and/or
  ``checksum {type, value}``; an ingested tabular file (``.tab``) also has ``originalFileName``,
  ``originalFileFormat`` and ``originalFileSize``. Files download from ``{base}/api/access/datafile/{id}``;
  ``?format=original`` returns the file as uploaded instead of Dataverse's tab-separated conversion. For an
  ingested file the stored checksum *is the checksum of the saved original* (IQSS/dataverse#7275), so the
  original is what we fetch and verify. Dataverse honours a single ``Range: bytes=N-`` (IQSS/dataverse#8087)
  and answers it with 206 + Content-Range since 2022 (#8727); an installation storing files on S3 with direct
  download (as Harvard's does for large files) redirects to a signed S3 URL, which honours Range itself.
- **HAM10000 file names.** The record holds ``HAM10000_images_part_1.zip`` (5,000 JPEGs) and
  ``HAM10000_images_part_2.zip`` (5,015), the metadata ``HAM10000_metadata`` ingested as a ``.tab`` (so we
  match the file by its stem and take the original CSV), plus segmentations and the ISIC 2018 test set,
  which ``prepare`` does not read and we do not fetch. File ids change between record versions (3172582 was
  the first metadata file, 4338392 the one with the ``dataset`` column), so they are looked up, never fixed.
- **ISIC 2019.** The challenge's data page (challenge.isic-archive.com/data, ImageMarkup/stade
  ``templates/data/2019.html``) links ``ISIC_2019_Training_Input.zip`` (9.1 GB, 25,331 JPEGs),
  ``ISIC_2019_Training_GroundTruth.csv`` and ``ISIC_2019_Training_Metadata.csv`` on the S3 bucket above; it
  publishes no checksums. The zip unpacks to ``ISIC_2019_Training_Input/`` (the JPEGs plus LICENSE and
  ATTRIBUTION text files). S3's ETag is the MD5 of the object only for single-part uploads; the 9.1 GB zip
  is necessarily multipart (a single S3 PUT is limited to 5 GB), so for it only the size can be checked.

Why not ``isic-cli`` (PyPI ``isic-cli``, ImageMarkup's maintained tool): it downloads the ISIC *Archive*
image by image through the archive API (``isic image download``) and writes the archive's own
``metadata.csv``; it has no notion of the challenge's training files — the one-hot
``ISIC_2019_Training_GroundTruth.csv``, the challenge metadata with its ``lesion_id``s, the ``_downsampled``
images — so it cannot produce the ISIC 2019 set ``prepare`` reads (and it has no Range resume or checksums:
it skips a file when the size matches). It would add click, requests, rich and tenacity for nothing we use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from crossderm.prepare.sources import (
    HAM_FOLDER,
    HAM_IMAGE_FOLDERS,
    HAM_METADATA_NAMES,
    ISIC_FOLDER,
    ISIC_GROUND_TRUTH,
    ISIC_IMAGE_FOLDER,
    ISIC_METADATA,
)

DATAVERSE = "dataverse"
S3 = "s3"


@dataclass(frozen=True)
class FileSpec:
    """One file the publisher serves and where it lands in the dataset folder.

    ``remote`` is the publisher's name (Dataverse ``filename`` or the S3 key below the base URL); ``aliases``
    are other names the same file has had (Dataverse renames an ingested CSV to ``.tab``). ``local`` is the
    file name in the dataset folder, or for an ``archive`` the folder the zip unpacks into.
    """

    remote: str
    local: str
    archive: bool = False
    aliases: tuple[str, ...] = ()

    @property
    def download_name(self) -> str:
        """Name of the downloaded file (before unpacking), unique within a dataset."""
        return f"{self.local}.zip" if self.archive else self.local


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: its publisher, where the publisher lives, the files we need, and the terms of use."""

    name: str
    folder: str
    publisher: str
    base_url: str
    base_url_env: str
    landing: str
    files: tuple[FileSpec, ...]
    licence: str
    citation: str
    persistent_id: str | None = None

    def resolved_base_url(self, override: str | None = None) -> str:
        """The argument, else the environment variable, else the publisher's real address (no trailing /)."""
        return (override or os.environ.get(self.base_url_env) or self.base_url).rstrip("/")


HAM10000 = DatasetSpec(
    name="ham10000",
    folder=HAM_FOLDER,
    publisher=DATAVERSE,
    base_url="https://dataverse.harvard.edu",
    base_url_env="CROSSDERM_HAM10000_URL",
    persistent_id="doi:10.7910/DVN/DBW86T",
    landing="https://doi.org/10.7910/DVN/DBW86T",
    files=(
        FileSpec(f"{HAM_IMAGE_FOLDERS[0]}.zip", HAM_IMAGE_FOLDERS[0], archive=True),
        FileSpec(f"{HAM_IMAGE_FOLDERS[1]}.zip", HAM_IMAGE_FOLDERS[1], archive=True),
        FileSpec(
            "HAM10000_metadata.tab",
            HAM_METADATA_NAMES[0],
            aliases=(HAM_METADATA_NAMES[0], HAM_METADATA_NAMES[1]),
        ),
    ),
    # Printed only when the Dataverse record states no licence itself (it normally does, and that is shown).
    licence="CC BY-NC 4.0, https://creativecommons.org/licenses/by-nc/4.0/ (see the Dataverse record's terms)",
    citation=(
        "Tschandl P, Rosendahl C, Kittler H. The HAM10000 dataset, a large collection of multi-source "
        "dermatoscopic images of common pigmented skin lesions. Sci Data 5, 180161 (2018). "
        "https://doi.org/10.1038/sdata.2018.161\n"
        "Data: Tschandl, Philipp, 2018, \"The HAM10000 dataset, a large collection of multi-source dermatoscopic "
        "images of common pigmented skin lesions\", https://doi.org/10.7910/DVN/DBW86T, Harvard Dataverse."
    ),
)

ISIC2019 = DatasetSpec(
    name="isic2019",
    folder=ISIC_FOLDER,
    publisher=S3,
    base_url="https://isic-challenge-data.s3.amazonaws.com/2019",
    base_url_env="CROSSDERM_ISIC2019_URL",
    landing="https://challenge.isic-archive.com/data/#2019",
    files=(
        FileSpec(f"{ISIC_IMAGE_FOLDER}.zip", ISIC_IMAGE_FOLDER, archive=True),
        FileSpec(ISIC_GROUND_TRUTH, ISIC_GROUND_TRUTH),
        FileSpec(ISIC_METADATA, ISIC_METADATA),
    ),
    licence="CC BY-NC 4.0, https://creativecommons.org/licenses/by-nc/4.0/ (ISIC 2019: Training)",
    citation=(
        "ISIC 2019 data is provided courtesy of the following sources: "
        "BCN_20000 Dataset: (c) Department of Dermatology, Hospital Clinic de Barcelona; "
        "HAM10000 Dataset: (c) by ViDIR Group, Department of Dermatology, Medical University of Vienna, "
        "https://doi.org/10.1038/sdata.2018.161; "
        "MSK Dataset: (c) Anonymous, https://arxiv.org/abs/1710.05006, https://arxiv.org/abs/1902.03368\n"
        "[1] Tschandl P, Rosendahl C, Kittler H. The HAM10000 dataset, a large collection of multi-source "
        "dermatoscopic images of common pigmented skin lesions. Sci Data 5, 180161 (2018).\n"
        "[2] Codella NCF et al. Skin Lesion Analysis Toward Melanoma Detection: A Challenge at the 2017 "
        "International Symposium on Biomedical Imaging (ISBI), Hosted by the International Skin Imaging "
        "Collaboration (ISIC). arXiv:1710.05006 (2017).\n"
        "[3] Hernandez-Perez C et al. BCN20000: Dermoscopic lesions in the wild. Sci Data 11, 641 (2024)."
    ),
)

# Same names, same order as crossderm.download.DATASET_NAMES (which --help reads without importing this; tested).
DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (HAM10000, ISIC2019)}
