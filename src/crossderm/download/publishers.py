"""What each publisher says about the files we need: URL, size, checksum (or why none), and the licence.

Why ask before downloading: the sizes decide the free-space check, and the checksums must come from the
publisher, not from the bytes we are about to receive. Dataverse answers with one JSON record of the dataset
(native API, by persistent id); S3 answers a HEAD per object (Content-Length, ETag, optional
``x-amz-checksum-*``). See ``catalog`` for where these protocol facts come from.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from crossderm.download.catalog import DATAVERSE, S3, DatasetSpec, FileSpec
from crossderm.download.http import RETRIES, Echo, get_json, head
from crossderm.download.verify import SIZE_ONLY, Checksum, dataverse_checksum, s3_checksum
from crossderm.errors import CrossdermError


@dataclass(frozen=True)
class RemoteFile:
    """One file as its publisher describes it; ``note`` says why there is no checksum (empty when there is)."""

    spec: FileSpec
    url: str
    size: int | None
    checksum: Checksum | None
    note: str = ""


@dataclass(frozen=True)
class Listing:
    files: list[RemoteFile]
    licence: str  # as the publisher states it, else the catalog's text
    record_url: str


def list_files(spec: DatasetSpec, base_url: str, *, retries: int = RETRIES, echo: Echo = print) -> Listing:
    """Ask the publisher of ``spec`` (at ``base_url``) about every file in ``spec.files``."""
    if spec.publisher == DATAVERSE:
        return _dataverse(spec, base_url, retries, echo)
    if spec.publisher == S3:
        return _s3(spec, base_url, retries, echo)
    raise CrossdermError(f"{spec.name}: unknown publisher kind {spec.publisher!r}")


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    return int(value) if isinstance(value, str) and value.isdigit() else None


def _dataverse(spec: DatasetSpec, base: str, retries: int, echo: Echo) -> Listing:
    url = f"{base}/api/datasets/:persistentId/?{urlencode({'persistentId': spec.persistent_id})}"
    record = get_json(url, retries=retries, echo=echo)
    data = record.get("data")
    version = data.get("latestVersion") if isinstance(data, Mapping) else None
    if not isinstance(version, Mapping) or not isinstance(version.get("files"), list):
        raise CrossdermError(f"{url}: not a Dataverse dataset record (no data.latestVersion.files)")
    by_name: dict[str, Mapping[str, Any]] = {}
    for entry in version["files"]:
        data_file = entry.get("dataFile") if isinstance(entry, Mapping) else None
        if not isinstance(data_file, Mapping):
            continue
        for key in ("filename", "originalFileName"):
            if data_file.get(key):
                by_name.setdefault(str(data_file[key]), data_file)
    files = [_dataverse_file(file_spec, by_name, base, url) for file_spec in spec.files]
    return Listing(files, _dataverse_licence(version) or spec.licence, url)


def _dataverse_file(
    file_spec: FileSpec, by_name: Mapping[str, Mapping[str, Any]], base: str, record: str
) -> RemoteFile:
    names = (file_spec.remote, *file_spec.aliases)
    data_file = next((by_name[name] for name in names if name in by_name), None)
    if data_file is None:
        listed = ", ".join(sorted(by_name)) or "no files"
        raise CrossdermError(f"{record}: the Dataverse record has no file {file_spec.remote} (it lists: {listed})")
    file_id = _int(data_file.get("id"))
    if file_id is None:
        raise CrossdermError(f"{record}: file {data_file.get('filename')!r} has no numeric id")
    # An ingested tabular file is served as Dataverse's .tab conversion unless we ask for the original; the
    # stored checksum and originalFileSize describe the original (IQSS/dataverse#7275), so that is what we get.
    ingested = data_file.get("tabularData") is True or bool(data_file.get("originalFileFormat"))
    url = f"{base}/api/access/datafile/{file_id}" + ("?format=original" if ingested else "")
    size = _int(data_file.get("originalFileSize" if ingested else "filesize"))
    checksum = dataverse_checksum(data_file)
    note = "" if checksum else f"{SIZE_ONLY} (the Dataverse file metadata has no checksum)"
    return RemoteFile(file_spec, url, size, checksum, note)


def _dataverse_licence(version: Mapping[str, Any]) -> str:
    """The record's licence (Dataverse 5.10+: ``license {name, uri}``; older: a name or terms of use)."""
    licence = version.get("license")
    if isinstance(licence, Mapping) and licence.get("name"):
        uri = licence.get("uri")
        return f"{licence['name']}" + (f", {uri}" if uri else "") + " (as stated on the Dataverse record)"
    if isinstance(licence, str) and licence.strip() and licence.strip().upper() != "NONE":
        return f"{licence.strip()} (as stated on the Dataverse record)"
    terms = version.get("termsOfUse")
    if isinstance(terms, str) and terms.strip():
        text = " ".join(re.sub(r"<[^>]+>", " ", terms).split())
        return (text if len(text) <= 300 else text[:297] + "...") + " (terms of use on the Dataverse record)"
    return ""


def _s3(spec: DatasetSpec, base: str, retries: int, echo: Echo) -> Listing:
    files = []
    for file_spec in spec.files:
        url = f"{base}/{quote(file_spec.remote)}"
        headers = head(url, headers={"x-amz-checksum-mode": "ENABLED"}, retries=retries, echo=echo)
        checksum, note = s3_checksum(headers)
        files.append(RemoteFile(file_spec, url, _int(headers.get("content-length")), checksum, note))
    return Listing(files, spec.licence, base)
