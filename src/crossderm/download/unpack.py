"""Unpack a zip into exactly one folder, refusing any member that would land outside it.

Why not ``ZipFile.extractall``: it silently rewrites dangerous names (drops a leading ``/``, skips ``..``), so
a crafted or damaged archive unpacks *somewhere* without anyone noticing. Here every member is checked before
anything is written, and one bad name refuses the whole archive with a one-line error naming it. Symbolic
links are refused too. Junk folders added by macOS archivers (``__MACOSX/``) are skipped.

Publishers differ on whether a zip holds its files at the top or inside one folder (the ISIC 2019 zip holds
``ISIC_2019_Training_Input/...``); when every member sits below the same single folder that folder is
stripped, so the files always land directly in the target folder ``prepare`` expects.
"""

from __future__ import annotations

import errno
import re
import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from crossderm.errors import CrossdermError

MACOS_JUNK = "__MACOSX"
_DRIVE = re.compile(r"^[A-Za-z]:")
CHUNK = 1 << 20


def plan_members(zip_path: Path, archive: zipfile.ZipFile) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Every file member with its path relative to the target folder; raises on a member that would escape."""
    members = []
    for info in archive.infolist():
        name = info.filename.replace("\\", "/")
        path = PurePosixPath(name)
        if name.startswith("/") or _DRIVE.match(name) or ".." in path.parts:
            raise CrossdermError(
                f"{zip_path}: refusing to unpack member {info.filename!r}: an absolute path or '..' would place it "
                "outside the target folder (the archive is damaged or malicious; nothing was unpacked)"
            )
        if stat.S_ISLNK(info.external_attr >> 16):
            raise CrossdermError(f"{zip_path}: refusing to unpack member {info.filename!r}: it is a symbolic link")
        if info.is_dir() or not path.parts or path.parts[0] == MACOS_JUNK:
            continue
        members.append((info, path))
    tops = {path.parts[0] for _, path in members}
    if len(tops) == 1 and all(len(path.parts) > 1 for _, path in members):
        members = [(info, PurePosixPath(*path.parts[1:])) for info, path in members]
    return members


def unpacked_size(zip_path: Path) -> int:
    """Bytes the archive's members take once unpacked (for the free-space check)."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            return sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise CrossdermError(f"{zip_path}: not a readable zip ({exc})") from None


def unpack(zip_path: Path, dest: Path) -> int:
    """Unpack ``zip_path`` into ``dest`` (created); return the number of files written.

    Every member is read to its end, so ``zipfile`` checks its CRC-32: for a download whose publisher serves
    no checksum (the ISIC 2019 zip) this is the one content check there is. CRC errors, unsupported
    compression and a full disk are one-line :class:`CrossdermError`s; the caller unpacks into a staging
    folder, so a failure leaves no half-unpacked dataset behind.
    """
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = plan_members(zip_path, archive)
            dest.mkdir(parents=True, exist_ok=True)
            root = dest.resolve()
            for info, relative in tqdm(members, desc=f"unpacking {zip_path.name}", unit="file", disable=None,
                                       leave=False):
                target = dest.joinpath(*relative.parts)
                if not target.resolve().is_relative_to(root):  # belt and braces after plan_members
                    raise CrossdermError(f"{zip_path}: refusing to unpack member {info.filename!r} outside {dest}")
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink, CHUNK)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, zlib.error) as exc:
        raise CrossdermError(f"{zip_path}: damaged or unsupported zip ({exc}); delete it and run again") from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise CrossdermError(f"{dest}: disk full while unpacking {zip_path.name}; free space, run again") from None
        raise CrossdermError(f"{zip_path}: cannot unpack into {dest} ({exc.strerror or exc})") from None
    return len(members)
