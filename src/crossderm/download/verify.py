"""Checksums: what each publisher serves, and checking a downloaded file against it.

Why this is its own module: "verified" must mean exactly what the publisher vouches for, no more. Dataverse
stores one checksum per file (MD5 on Harvard's installation; SHA-1/256/512 elsewhere) in its file metadata.
S3 serves no checksum as such: its ETag equals the object's MD5 only for a single-part upload stored without
KMS encryption, and is ``"<md5 of part md5s>-<parts>"`` for a multipart upload, which no download can be checked
against. Newer S3 objects may also carry ``x-amz-checksum-sha256`` (full-object when it has no ``-N`` suffix),
returned when the request says ``x-amz-checksum-mode: ENABLED``. Anything else is reported as "no checksum
published, size checked only" rather than passed off as verified.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from crossderm.errors import CrossdermError

# Dataverse's checksum types (DataFile.ChecksumType) -> hashlib names.
DATAVERSE_ALGORITHMS = {"MD5": "md5", "SHA-1": "sha1", "SHA-256": "sha256", "SHA-512": "sha512"}
_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")
_MULTIPART_ETAG = re.compile(r"^[0-9a-f]{32}-\d+$")
SIZE_ONLY = "no checksum published, size checked only"
BLOCK = 1 << 20


@dataclass(frozen=True)
class Checksum:
    """A digest the publisher serves: ``algorithm`` (hashlib name), lowercase hex ``value``, and its ``source``."""

    algorithm: str
    value: str
    source: str

    @property
    def label(self) -> str:
        return self.algorithm.upper()

    def as_json(self) -> dict[str, str]:
        return {"algorithm": self.algorithm, "value": self.value, "source": self.source}


def dataverse_checksum(data_file: Mapping[str, Any]) -> Checksum | None:
    """The checksum in a Dataverse ``dataFile`` object: ``checksum {type, value}``, else the older ``md5``."""
    checksum = data_file.get("checksum")
    if isinstance(checksum, Mapping) and checksum.get("value"):
        algorithm = DATAVERSE_ALGORITHMS.get(str(checksum.get("type", "")).upper())
        if algorithm:
            return Checksum(algorithm, str(checksum["value"]).strip().lower(), "Dataverse file metadata")
    md5 = data_file.get("md5")
    if isinstance(md5, str) and _MD5_HEX.match(md5.strip().lower()):
        return Checksum("md5", md5.strip().lower(), "Dataverse file metadata")
    return None


def s3_checksum(headers: Mapping[str, str]) -> tuple[Checksum | None, str]:
    """What an S3 response (headers with lower-case names) vouches for: a checksum, or why there is none."""
    sha256 = headers.get("x-amz-checksum-sha256", "").strip()
    full_object = headers.get("x-amz-checksum-type", "FULL_OBJECT").strip().upper() == "FULL_OBJECT"
    if sha256 and "-" not in sha256 and full_object:
        try:
            digest = base64.b64decode(sha256, validate=True)
        except (binascii.Error, ValueError):
            digest = b""
        if len(digest) == 32:
            return Checksum("sha256", digest.hex(), "S3 x-amz-checksum-sha256"), ""
    raw = headers.get("etag", "").strip()
    etag = raw.strip('"').lower()
    if raw.startswith("W/"):
        return None, f"{SIZE_ONLY} (S3 ETag {raw} is a weak ETag, not a checksum)"
    if _MD5_HEX.match(etag):
        return Checksum("md5", etag, "S3 ETag of a single-part upload, which is the object's MD5"), ""
    if _MULTIPART_ETAG.match(etag):
        return None, f'{SIZE_ONLY} (S3 ETag "{etag}" is a multipart-upload ETag, not an MD5 of the file)'
    return None, SIZE_ONLY


def file_digest(path: Path, algorithm: str, desc: str) -> str:
    """Hex digest of ``path``, read in 1 MiB blocks with a progress bar (hashing 9 GB takes a while)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle, tqdm(
        total=path.stat().st_size, desc=f"checking {desc}", unit="B", unit_scale=True, unit_divisor=1024,
        disable=None, leave=False,
    ) as progress:
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)
            progress.update(len(block))
    return digest.hexdigest()


def verify_file(
    path: Path, *, name: str, url: str, size: int | None, checksum: Checksum | None, note: str = ""
) -> str:
    """Check ``path`` (the downloaded ``name``) against the publisher's size and checksum; say how it was checked.

    On a mismatch the file is deleted (it is wrong, and resuming onto it could never fix it) and a one-line
    :class:`CrossdermError` names the file, the URL and both values.
    """
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        path.unlink(missing_ok=True)
        raise CrossdermError(
            f"{name}: size mismatch for {url}: the publisher says {size:,} bytes, got {actual_size:,}; "
            "the download was removed, run again to fetch it anew"
        )
    if checksum is None:
        return (note or SIZE_ONLY) if size is not None else "no checksum or size published: nothing to check against"
    actual = file_digest(path, checksum.algorithm, name)
    if actual != checksum.value:
        path.unlink(missing_ok=True)
        raise CrossdermError(
            f"{name}: checksum mismatch for {url}: {checksum.label} expected {checksum.value} ({checksum.source}), "
            f"got {actual}; the download was removed, run again to fetch it anew"
        )
    return f"{checksum.label} verified ({checksum.source})"
