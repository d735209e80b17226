"""Atomic file and folder writes, so an interrupted run never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crossderm.errors import CrossdermError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's private 0600 would hide run files from collaborators
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process umask (reading it means setting it; set straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (weights files are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: str | Path, missing_hint: str) -> dict[str, Any]:
    """A JSON object from ``path``; absent, unreadable or not an object is a one-line :class:`CrossdermError`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CrossdermError(f"{path}: not found ({missing_hint})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CrossdermError(f"{path}: cannot read JSON ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise CrossdermError(f"{path}: expected a JSON object")
    return data


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_can_create_in(folder: Path, option: str, target: Path) -> None:
    """A file can really be created in ``folder`` (a probe file: as root, permission bits alone say yes)."""
    if not folder.is_dir():
        raise CrossdermError(f"{option} {target}: {folder} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".crossderm-write-probe-")
    except OSError as exc:
        raise CrossdermError(f"{option} {target}: cannot write in {folder} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


def check_writable_file(path: str | Path, option: str) -> None:
    """Before any work: ``path`` can be written as a file (not a folder; its folder creatable and writable)."""
    path = Path(path)
    if path.is_dir():
        raise CrossdermError(f"{option} {path}: is a folder; give a file name")
    _check_can_create_in(_nearest_existing(path.parent), option, path)


def check_writable_folder(path: str | Path, option: str) -> None:
    """Before any work: ``path`` can be created (or replaced) as a folder: not a file, its parent writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CrossdermError(f"{option} {path}: is a file, not a folder")
    _check_can_create_in(_nearest_existing(path.absolute().parent), option, path)
    if path.is_dir():
        _check_can_create_in(path, option, path)


def _backup_of(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def recover_directory(target: str | Path) -> None:
    """Finish an :func:`atomic_directory` replacement a crash interrupted between its two renames: the target
    is then missing and its (complete) backup is still there; a backup beside a present target is stale."""
    target = Path(target).absolute()
    backup = _backup_of(target)
    if backup.is_dir():
        if target.exists():
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(backup, target)


def remove_stale_staging(folder: str | Path) -> list[Path]:
    """Delete the staging folders and temporary files a killed writer left directly in ``folder``.

    Only for a caller that holds the folder's lock (:func:`exclusive_lock`): nobody else is writing there."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.glob(".*") if ".staging-" in p.name or p.name.endswith(".tmp")]
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


@contextlib.contextmanager
def atomic_directory(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh sibling staging folder; on success it replaces ``target``.

    On any error the staging folder is removed and ``target`` is left exactly as it was. The replacement is two
    renames (target -> ``.<name>.old``, staging -> target); a kill between them leaves the old folder complete
    under its backup name, which :func:`recover_directory` puts back (every reader of such a folder calls it).
    """
    target = Path(target).absolute()
    recover_directory(target)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise CrossdermError(f"{target}: exists and is not empty (pass --overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.staging-"))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's private 0700 would otherwise become the final folder's mode
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    backup = _backup_of(target)
    if target.exists():
        os.replace(target, backup)
    os.replace(staging, target)
    shutil.rmtree(backup, ignore_errors=True)


@contextlib.contextmanager
def output_lock(path: str | Path, what: str, wait: bool = False) -> Iterator[None]:
    """Hold an output file's lock while writing it, after removing what a killed writer of it left (its
    ``.<name>.*.tmp`` files: :func:`atomic_write_bytes` writes there first). ``wait``: see :func:`exclusive_lock`."""
    path = Path(path).absolute()
    with exclusive_lock(path, what, wait=wait):
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            stale.unlink(missing_ok=True)
        yield


def lock_path(target: str | Path) -> Path:
    """The lock file of a run folder or DATA_DIR: a sibling, so it survives the folder being replaced."""
    target = Path(target).absolute()
    return target.with_name(f".{target.name}.lock")


def lock_holder(target: str | Path) -> str | None:
    """Who holds ``target``'s lock (as written by the holder), or None when nobody does."""
    path = lock_path(target)
    if not path.is_file():
        return None
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            return handle.read().strip() or "another process"
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


@contextlib.contextmanager
def exclusive_lock(target: str | Path, what: str, wait: bool = False) -> Iterator[None]:
    """Hold ``target``'s lock while writing it; a second writer is refused at once, naming the holder (or, with
    ``wait``, for a short shared step, waits its turn).

    ``flock`` locks die with their process, so a killed writer never leaves a stale lock behind.
    """
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 (held for the whole context)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise CrossdermError(f"{Path(target)}: in use by {holder}; wait for it to finish or stop it") from None
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} ({what}, since {started})\n")
        handle.flush()
        yield
    finally:
        handle.close()
