"""The file-system rules every writer relies on: atomic files and folders, crash recovery, locks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from crossderm.errors import CrossdermError
from crossderm.fsutil import (
    atomic_directory,
    atomic_write_text,
    exclusive_lock,
    lock_holder,
    recover_directory,
    remove_stale_staging,
)


def test_atomic_files_and_folders_follow_the_umask(tmp_path: Path) -> None:
    """Run files must be readable by collaborators as the umask allows, not private like mkstemp's 0600."""
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_directory(tmp_path / "folder") as staging:
            (staging / "b.txt").write_text("y")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o750
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "folder"]


def test_a_failed_replacement_leaves_the_old_folder(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
        raise RuntimeError("work failed")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (target / "old.txt").read_text() == "old"
    with pytest.raises(CrossdermError, match="exists and is not empty"), atomic_directory(target):
        pass


def test_a_kill_between_the_two_renames_is_recovered(tmp_path: Path) -> None:
    target, backup = tmp_path / "out", tmp_path / ".out.old"
    backup.mkdir()
    (backup / "complete.txt").write_text("done")
    recover_directory(target)
    assert (target / "complete.txt").read_text() == "done" and not backup.exists()
    backup.mkdir()  # a backup beside a present target is stale
    recover_directory(target)
    assert not backup.exists() and (target / "complete.txt").is_file()


def test_stale_staging_is_removed(tmp_path: Path) -> None:
    (tmp_path / ".out.staging-abc").mkdir()
    (tmp_path / ".metrics.json.x1.tmp").write_text("half")
    (tmp_path / "keep.txt").write_text("keep")
    assert len(remove_stale_staging(tmp_path)) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_a_second_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    target = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from crossderm.fsutil import exclusive_lock\n"
         f"with exclusive_lock({str(target)!r}, 'cv'):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert f"pid {holder.pid}" in lock_holder(target)
        with pytest.raises(CrossdermError, match=rf"run: in use by pid {holder.pid} on .*\(cv, since"), \
                exclusive_lock(target, "cv"):
            pass
    finally:
        holder.kill()
        holder.wait()
    assert lock_holder(target) is None  # flock dies with its process: no stale lock
    with exclusive_lock(target, "cv"):
        pass
