"""Checksum parsing (Dataverse metadata, S3 headers), the Range edge cases, and safe unpacking, one by one."""

from __future__ import annotations

import base64
import hashlib
import stat
import zipfile
from pathlib import Path

import pytest
from fake_publisher import Publisher, Served

from crossderm.download.http import download
from crossderm.download.unpack import plan_members, unpack
from crossderm.download.verify import Checksum, dataverse_checksum, s3_checksum, verify_file
from crossderm.errors import CrossdermError

MD5 = hashlib.md5(b"abc").hexdigest()


def test_dataverse_checksum_reads_checksum_then_md5() -> None:
    sha = hashlib.sha256(b"abc").hexdigest()
    assert dataverse_checksum({"checksum": {"type": "SHA-256", "value": sha.upper()}, "md5": MD5}) == Checksum(
        "sha256", sha, "Dataverse file metadata")
    assert dataverse_checksum({"md5": MD5}) == Checksum("md5", MD5, "Dataverse file metadata")
    assert dataverse_checksum({"checksum": {"type": "UNF", "value": "UNF:6:x"}}) is None
    assert dataverse_checksum({}) is None


@pytest.mark.parametrize(
    ("headers", "algorithm", "note"),
    [
        ({"etag": f'"{MD5}"'}, "md5", ""),
        ({"etag": f'"{MD5}-12"'}, None, "multipart-upload ETag"),
        ({"etag": f'W/"{MD5}"'}, None, "weak ETag"),
        ({}, None, "no checksum published, size checked only"),
        ({"etag": f'"{MD5}-3"', "x-amz-checksum-sha256": base64.b64encode(hashlib.sha256(b"abc").digest()).decode()},
         "sha256", ""),
        ({"etag": f'"{MD5}-3"', "x-amz-checksum-sha256": "AAAA-3", "x-amz-checksum-type": "COMPOSITE"}, None,
         "multipart-upload ETag"),
    ],
)
def test_s3_checksum_vouches_only_for_what_s3_guarantees(headers: dict, algorithm: str | None, note: str) -> None:
    checksum, why = s3_checksum(headers)
    assert (checksum.algorithm if checksum else None) == algorithm
    assert note in why


def test_verify_file_names_both_values_and_removes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.part"
    path.write_bytes(b"abd")
    with pytest.raises(CrossdermError, match=f"x: checksum mismatch for http://h/x: MD5 expected {MD5}") as caught:
        verify_file(path, name="x", url="http://h/x", size=3, checksum=Checksum("md5", MD5, "test"))
    assert hashlib.md5(b"abd").hexdigest() in str(caught.value) and not path.exists()
    path.write_bytes(b"abcd")
    with pytest.raises(CrossdermError, match="size mismatch .* says 3 bytes, got 4"):
        verify_file(path, name="x", url="http://h/x", size=3, checksum=None)
    path.write_bytes(b"abc")
    assert verify_file(path, name="x", url="u", size=3, checksum=None, note="why") == "why"


def test_a_complete_part_answered_with_416_is_kept(tmp_path: Path) -> None:
    server = Publisher()
    server.routes["/f"] = Served(b"0123456789")
    try:
        part = tmp_path / "f.part"
        part.write_bytes(b"0123456789")
        assert download(f"{server.url}/f", part, name="f", size=None, echo=lambda _: None) == 10
        assert server.gets("/f") == ["bytes=10-"] and part.read_bytes() == b"0123456789"
        part.write_bytes(b"0123456789xx")  # longer than the file: start again
        assert download(f"{server.url}/f", part, name="f", size=10, echo=lambda _: None) == 10
        assert part.read_bytes() == b"0123456789"
    finally:
        server.close()


def _zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


@pytest.mark.parametrize("name", ["../up.jpg", "a/../../up.jpg", "/etc/passwd", "C:/Windows/x.jpg", "..\\up.jpg"])
def test_members_that_would_escape_are_refused_before_anything_is_written(tmp_path: Path, name: str) -> None:
    archive = _zip(tmp_path / "bad.zip", {"ok.jpg": b"1", name: b"2"})
    with pytest.raises(CrossdermError, match="refusing to unpack member"):
        unpack(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_symbolic_links_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as archive:
        info = zipfile.ZipInfo("link.jpg")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(CrossdermError, match="symbolic link"):
        unpack(path, tmp_path / "dest")


def test_one_common_folder_is_stripped_and_macos_junk_skipped(tmp_path: Path) -> None:
    members = {"Input/a.jpg": b"a", "Input/sub/b.jpg": b"b", "__MACOSX/Input/._a.jpg": b"junk"}
    with zipfile.ZipFile(_zip(tmp_path / "z.zip", members)) as archive:
        assert [str(p) for _, p in plan_members(tmp_path / "z.zip", archive)] == ["a.jpg", "sub/b.jpg"]
    assert unpack(tmp_path / "z.zip", tmp_path / "dest") == 2
    assert (tmp_path / "dest" / "sub" / "b.jpg").read_bytes() == b"b"
    flat = _zip(tmp_path / "flat.zip", {"a.jpg": b"a", "Input/b.jpg": b"b"})
    with zipfile.ZipFile(flat) as archive:
        assert [str(p) for _, p in plan_members(flat, archive)] == ["a.jpg", "Input/b.jpg"]


def test_a_corrupted_member_fails_its_crc_check(tmp_path: Path) -> None:
    path = _zip(tmp_path / "z.zip", {"a.jpg": b"A" * 1000}, zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    data[data.index(b"A" * 1000) + 500] = ord("B")  # same size: only the CRC can tell
    path.write_bytes(bytes(data))
    with pytest.raises(CrossdermError, match="damaged or unsupported zip .*CRC"):
        unpack(path, tmp_path / "dest")
