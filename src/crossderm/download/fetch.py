"""``download_dataset``: ask the publisher, check free space, download with resume, verify, unpack, place.

The sequence, and why each step is where it is:

1. ``OUT/<folder>/.crossderm-download.json`` present: the dataset was downloaded, verified and unpacked by
   an earlier run, so nothing is done (no network). ``overwrite`` fetches it again.
2. The publisher is asked about every file first (sizes, checksums), so the free-space check runs before a
   byte is downloaded: what is still to download plus what unpacking will need.
3. Each file downloads to ``OUT/.crossderm-download/<dataset>/<name>.part`` with Range resume; it becomes
   ``<name>`` (one rename) only after its size and checksum match, so a file without ``.part`` is verified.
   An interrupted run leaves the ``.part``; the next run resumes it.
4. Zips unpack (safely, see ``unpack``) and CSVs are copied into a staging folder that replaces
   ``OUT/<folder>`` in one rename (``fsutil.atomic_directory``): ``prepare`` never sees half a dataset.
5. The downloads are deleted unless ``keep_archives``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from crossderm.download.catalog import DATASETS, DatasetSpec
from crossderm.download.http import RETRIES, Echo, download
from crossderm.download.publishers import RemoteFile, list_files
from crossderm.download.unpack import unpack, unpacked_size
from crossderm.download.verify import verify_file
from crossderm.errors import CrossdermError
from crossderm.fsutil import atomic_directory, atomic_write_json, read_json

MARKER = ".crossderm-download.json"
WORK_DIR = ".crossderm-download"
SPACE_MARGIN = 64 << 20  # head room for the marker, folder entries and file-system rounding


@dataclass(frozen=True)
class FileReport:
    """One file as fetched: how many bytes, and exactly how it was verified."""

    name: str
    url: str
    bytes: int
    verified: str
    checksum: dict[str, str] | None = None


@dataclass
class DownloadResult:
    dataset: str
    folder: Path
    licence: str
    citation: str
    files: list[FileReport] = field(default_factory=list)
    already: bool = False  # nothing was done: an earlier run completed this folder


def human_bytes(n: float) -> str:
    """``9,100,000,000`` -> ``9.1 GB`` (decimal units, as the publishers state sizes)."""
    if n < 1000:
        return f"{n:,.0f} bytes"
    for unit in ("kB", "MB"):
        n /= 1000
        if n < 1000:
            return f"{n:,.1f} {unit}"
    return f"{n / 1000:,.1f} GB"


def download_dataset(
    name: str,
    out: str | Path,
    *,
    base_url: str | None = None,
    overwrite: bool = False,
    keep_archives: bool = False,
    retries: int = RETRIES,
    echo: Echo = print,
) -> DownloadResult:
    """Download dataset ``name`` (``ham10000`` or ``isic2019``) into ``out/<HAM10000|ISIC2019>``.

    ``base_url`` replaces the publisher's address (default: the ``CROSSDERM_<NAME>_URL`` environment variable,
    else the real one in ``catalog``). Every problem is a one-line :class:`CrossdermError`.
    """
    spec = DATASETS.get(name)
    if spec is None:
        raise CrossdermError(f"unknown dataset {name!r} (choose from {', '.join(DATASETS)})")
    out = Path(out)
    target = out / spec.folder
    if (target / MARKER).is_file() and not overwrite:
        return _already_done(spec, target, echo)
    if target.exists() and not target.is_dir():
        raise CrossdermError(f"{target}: exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise CrossdermError(
            f"{target}: exists and was not written by crossderm download (pass --overwrite to replace it)"
        )
    try:
        return _download(spec, out, target, spec.resolved_base_url(base_url), overwrite, keep_archives, retries, echo)
    except OSError as exc:  # permissions, a full disk while copying: one line, never a traceback
        where = exc.filename or out
        raise CrossdermError(f"{where}: {exc.strerror or exc} (while downloading {spec.name})") from None


def _download(
    spec: DatasetSpec, out: Path, target: Path, base: str, overwrite: bool, keep_archives: bool, retries: int,
    echo: Echo,
) -> DownloadResult:
    listing = list_files(spec, base, retries=retries, echo=echo)
    work = out / WORK_DIR / spec.name
    _check_space(out, spec, listing.files, work)
    reports = [_fetch_file(remote, work, retries, echo) for remote in listing.files]
    _check_unpack_space(out, spec, listing.files, work)
    with atomic_directory(target, overwrite=overwrite) as staging:
        for index, remote in enumerate(listing.files):
            source = work / remote.spec.download_name
            if remote.spec.archive:
                count = unpack(source, staging / remote.spec.local)
                echo(f"{spec.name}: unpacked {source.name} -> {target / remote.spec.local} ({count:,} files)")
                verified = f"{reports[index].verified}; CRC-32 of its {count:,} files checked while unpacking"
                reports[index] = replace(reports[index], verified=verified)
            else:
                shutil.copyfile(source, staging / remote.spec.local)
        result = DownloadResult(spec.name, target, listing.licence, spec.citation, reports)
        atomic_write_json(staging / MARKER, _marker(spec, listing.record_url, result))
    if not keep_archives:
        shutil.rmtree(work, ignore_errors=True)
        if (out / WORK_DIR).is_dir() and not any((out / WORK_DIR).iterdir()):
            (out / WORK_DIR).rmdir()
    return result


def _fetch_file(remote: RemoteFile, work: Path, retries: int, echo: Echo) -> FileReport:
    """The verified download of one file in ``work``: resumed, re-checked if already complete, or fetched."""
    name = remote.spec.download_name
    final = work / name
    part = work / f"{name}.part"
    checksum = remote.checksum.as_json() if remote.checksum else None
    if final.is_file():
        echo(f"{name}: downloaded by an earlier run; checking it again")
        how = _verify(final, remote)
        return FileReport(name, remote.url, final.stat().st_size, how, checksum)
    size = human_bytes(remote.size) if remote.size is not None else "size unknown"
    if part.is_file() and part.stat().st_size:
        echo(f"{name}: resuming at {human_bytes(part.stat().st_size)} of {size} from {remote.url}")
    else:
        echo(f"{name}: downloading {size} from {remote.url}")
    work.mkdir(parents=True, exist_ok=True)
    download(remote.url, part, name=name, size=remote.size, retries=retries, echo=echo)
    how = _verify(part, remote)
    part.replace(final)
    echo(f"{name}: {how}")
    return FileReport(name, remote.url, final.stat().st_size, how, checksum)


def _verify(path: Path, remote: RemoteFile) -> str:
    return verify_file(
        path, name=remote.spec.download_name, url=remote.url, size=remote.size, checksum=remote.checksum,
        note=remote.note,
    )


def _free_bytes(path: Path) -> int:
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _check_space(out: Path, spec: DatasetSpec, files: list[RemoteFile], work: Path) -> None:
    """Before downloading: room for what is still to fetch plus the unpacked copy (JPEGs barely compress)."""
    to_fetch = to_unpack = 0
    for remote in files:
        size = remote.size or 0
        final, part = work / remote.spec.download_name, work / f"{remote.spec.download_name}.part"
        have = final.stat().st_size if final.is_file() else part.stat().st_size if part.is_file() else 0
        to_fetch += max(size - have, 0)
        to_unpack += size
    what = f"{human_bytes(to_fetch)} to download + {human_bytes(to_unpack)} to unpack"
    _require(out, spec, to_fetch + to_unpack, what)


def _check_unpack_space(out: Path, spec: DatasetSpec, files: list[RemoteFile], work: Path) -> None:
    """Before unpacking: the exact unpacked sizes the zips declare."""
    need = 0
    for remote in files:
        source = work / remote.spec.download_name
        need += unpacked_size(source) if remote.spec.archive else source.stat().st_size
    _require(out, spec, need, f"{human_bytes(need)} to unpack")


def _require(out: Path, spec: DatasetSpec, need: int, what: str) -> None:
    free = _free_bytes(out)
    if need + SPACE_MARGIN > free:
        raise CrossdermError(
            f"{out}: not enough free disk space for {spec.name}: need {human_bytes(need + SPACE_MARGIN)} ({what}), "
            f"{human_bytes(free)} free"
        )


def _marker(spec: DatasetSpec, record_url: str, result: DownloadResult) -> dict[str, Any]:
    return {
        "dataset": spec.name,
        "publisher_record": record_url,
        "landing_page": spec.landing,
        "downloaded_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": [vars(report) for report in result.files],
        "licence": result.licence,
        "citation": result.citation,
    }


def _already_done(spec: DatasetSpec, target: Path, echo: Echo) -> DownloadResult:
    marker = read_json(target / MARKER, "written by crossderm download")
    echo(f"{target}: already downloaded and verified by an earlier run ({MARKER}); nothing to do "
         "(--overwrite fetches it again)")
    keys = ("name", "url", "bytes", "verified", "checksum")
    entries = [entry for entry in marker.get("files", []) if isinstance(entry, dict)]
    files = [FileReport(**{key: entry.get(key) for key in keys}) for entry in entries]
    return DownloadResult(spec.name, target, str(marker.get("licence", spec.licence)),
                          str(marker.get("citation", spec.citation)), files, already=True)
