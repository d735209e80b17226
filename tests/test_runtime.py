"""The process runtime: device resolution, the allocator tuning as an explicit call with a visible effect, and the
choice of CPU threads (available CPUs from fake cgroup files, affinity and Slurm; ``--threads`` reaching torch)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from crossderm import runtime
from crossderm.errors import CrossdermError
from crossderm.runtime import Runtime

# In a fresh process: a 16 MiB malloc is served by mmap (glibc's default threshold is 128 KiB-32 MiB, dynamic)
# unless tuned; after tune_cpu_allocator() it comes from the heap, and freeing it keeps the heap.
MALLOC_PROBE = """
import ctypes, sys
from crossderm.runtime import tune_cpu_allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "tuned":
    assert tune_cpu_allocator() is True
before = libc.mallinfo2().hblkhd
block = libc.malloc(16 * 2**20)
mmapped = libc.mallinfo2().hblkhd - before
libc.free(block)
print(mmapped, libc.mallinfo2().fordblks)
"""


def _probe(mode: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", MALLOC_PROBE, mode], capture_output=True, text=True, check=True)
    mmapped, free_kept = out.stdout.split()
    return int(mmapped), int(free_kept)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_tuning_moves_large_blocks_from_mmap_to_a_kept_heap() -> None:
    mmapped, _ = _probe("default")
    assert mmapped >= 16 * 2**20  # untuned: the block is its own mmap, returned to the kernel on free
    mmapped, free_kept = _probe("tuned")
    assert mmapped == 0 and free_kept >= 16 * 2**20  # tuned: heap memory, kept for the next batch


def test_resolving_the_runtime_does_not_tune_the_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(runtime, "tune_cpu_allocator", lambda: calls.append(1) or True)
    resolved = Runtime.resolve("cpu")
    assert resolved.device == torch.device("cpu") and not resolved.bf16 and calls == []


@pytest.mark.parametrize(("amp", "bf16"), [("auto", False), ("bf16", True), ("off", False)])
def test_bf16_only_when_asked_on_cpu(amp: str, bf16: bool) -> None:
    assert Runtime.resolve("cpu", amp).bf16 is bf16


def test_bad_devices_are_one_line_errors() -> None:
    with pytest.raises(CrossdermError, match="not a device"):
        Runtime.resolve("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(CrossdermError, match="CUDA is not available"):
            Runtime.resolve("cuda")


# --- CPU threads: which CPUs this process may use, and --threads reaching torch ---------------------------------


@pytest.fixture
def eight_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """An 8-CPU machine whose affinity mask allows all 8."""
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


def _cgroup(tmp_path: Path, own: str = "0::/", **files: str) -> tuple[Path, Path]:
    """A fake cgroup mount (files by relative path, '__' for '/') and a fake /proc/self/cgroup."""
    root = tmp_path / "cgroup"
    root.mkdir()
    for name, text in files.items():
        path = root / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(own + "\n")
    return root, proc


@pytest.mark.usefixtures("eight_cpus")
def test_cgroup_v2_without_a_quota_leaves_the_affinity_mask(tmp_path: Path) -> None:
    root, proc = _cgroup(tmp_path, **{"cpu.max": "max 100000"})
    assert runtime.cgroup_cpu_quota(root, proc) is None
    assert runtime.cpu_limits(root, proc, environ={}) == {"affinity": 8}
    assert runtime.available_cpus(root, proc, environ={}) == 8


@pytest.mark.usefixtures("eight_cpus")
@pytest.mark.parametrize(("cpu_max", "quota", "cpus"), [("150000 100000", 1.5, 1), ("250000 100000", 2.5, 2),
                                                        ("50000 100000", 0.5, 1), ("400000 100000", 4.0, 4)])
def test_cgroup_v2_quota_is_rounded_down_to_whole_cpus(tmp_path: Path, cpu_max: str, quota: float, cpus: int) -> None:
    root, proc = _cgroup(tmp_path, **{"cpu.max": cpu_max})
    assert runtime.cgroup_cpu_quota(root, proc) == pytest.approx(quota)
    assert runtime.available_cpus(root, proc, environ={}) == cpus


@pytest.mark.usefixtures("eight_cpus")
def test_cgroup_v2_quota_of_an_ancestor_of_the_process_cgroup_applies(tmp_path: Path) -> None:
    # a host or a Slurm job: the mount is the hierarchy's root; the job's folder has the quota, the step none
    root, proc = _cgroup(tmp_path, own="0::/job_7/step_0", **{"job_7__cpu.max": "300000 100000",
                                                              "job_7__step_0__cpu.max": "max 100000"})
    assert runtime.cgroup_cpu_quota(root, proc) == pytest.approx(3.0)
    assert runtime.available_cpus(root, proc, environ={}) == 3


@pytest.mark.usefixtures("eight_cpus")
@pytest.mark.parametrize("folder", ["cpu", "cpu,cpuacct"])
def test_cgroup_v1_cfs_quota_over_period(tmp_path: Path, folder: str) -> None:
    root, proc = _cgroup(tmp_path, own="4:cpu,cpuacct:/\n3:memory:/", **{
        f"{folder}__cpu.cfs_quota_us": "200000", f"{folder}__cpu.cfs_period_us": "100000"})
    assert runtime.cgroup_cpu_quota(root, proc) == pytest.approx(2.0)
    assert runtime.cpu_limits(root, proc, environ={}) == {"affinity": 8, "cgroup": 2.0}
    assert runtime.available_cpus(root, proc, environ={}) == 2


@pytest.mark.usefixtures("eight_cpus")
def test_cgroup_v1_without_a_quota(tmp_path: Path) -> None:
    root, proc = _cgroup(tmp_path, **{"cpu__cpu.cfs_quota_us": "-1", "cpu__cpu.cfs_period_us": "100000"})
    assert runtime.cgroup_cpu_quota(root, proc) is None
    assert runtime.available_cpus(root, proc, environ={}) == 8


def test_an_affinity_mask_smaller_than_the_machine_is_what_counts(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    root, proc = _cgroup(tmp_path)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 5, 6}, raising=False)
    assert runtime.available_cpus(root, proc, environ={}) == 3


def test_without_an_affinity_mask_the_cpu_count_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, proc = _cgroup(tmp_path)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    assert runtime.cpu_limits(root, proc, environ={}) == {"cpu_count": 6}


@pytest.mark.usefixtures("eight_cpus")
def test_slurm_cpus_per_task_and_the_smallest_limit(tmp_path: Path) -> None:
    root, proc = _cgroup(tmp_path, **{"cpu.max": "600000 100000"})
    assert runtime.available_cpus(root, proc, environ={"SLURM_CPUS_PER_TASK": "3"}) == 3
    assert runtime.available_cpus(root, proc, environ={"SLURM_CPUS_PER_TASK": "7"}) == 6  # the quota is smaller
    for ignored in ("", "0", "two"):
        assert runtime.cpu_limits(root, proc, environ={"SLURM_CPUS_PER_TASK": ignored}) == {"affinity": 8,
                                                                                           "cgroup": 6.0}


def _stat(*cpus: tuple[int, int]) -> str:
    """A /proc/stat with one line per CPU: (busy user ticks, idle ticks)."""
    lines = [f"cpu  {sum(b for b, _ in cpus)} 0 0 {sum(i for _, i in cpus)} 0 0 0 0 0 0"]
    lines += [f"cpu{n} {busy} 0 0 {idle} 0 0 0 0 0 0" for n, (busy, idle) in enumerate(cpus)]
    return "\n".join([*lines, "intr 12345", "ctxt 678"]) + "\n"


def test_busy_cpus_of_others_counts_the_process_own_cpus_only(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    stat = tmp_path / "stat"
    # over the window cpu0 is busy all the time, cpu1 a quarter of it, cpu2 (not ours) all the time
    before, after = _stat((1000, 1000), (500, 1500), (0, 0)), _stat((1100, 1000), (525, 1575), (100, 0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    stat.write_text(before)
    busy = runtime.busy_cpus_of_others(0.0, stat, sleep=lambda s: stat.write_text(after))
    assert busy == pytest.approx(1.25, abs=0.05)  # minus this process's own CPU time in the window: ~0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1}, raising=False)
    stat.write_text(before)
    assert runtime.busy_cpus_of_others(0.0, stat, sleep=lambda s: stat.write_text(after)) == pytest.approx(
        0.25, abs=0.05)
    assert runtime.busy_cpus_of_others(0.0, tmp_path / "absent") == 0.0


def test_busy_cpus_of_others_sees_a_competing_process() -> None:
    if not Path("/proc/stat").is_file():
        pytest.skip("no /proc/stat")
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert runtime.busy_cpus_of_others(0.5) >= 0.5  # the busy loop is one CPU (shared with other load)
    finally:
        spin.kill()
        spin.wait()


@pytest.mark.parametrize(("others", "threads"), [(0.0, 4), (0.4, 4), (1.2, 3), (3.6, 1), (9.0, 1)])
def test_adaptive_threads_leave_the_cpus_others_keep_busy(monkeypatch: pytest.MonkeyPatch, others: float,
                                                          threads: int) -> None:
    monkeypatch.setattr(runtime, "cpu_limits", lambda environ=None: {"affinity": 8, "cgroup": 4.0})
    monkeypatch.setattr(runtime, "busy_cpus_of_others", lambda window_s: others)
    assert runtime.choose_threads(0, environ={}).threads == 4  # auto ignores the load: reproducible
    choice = runtime.choose_threads("adaptive", environ={})
    assert choice.threads == threads
    assert choice.source.startswith("auto: 4 CPU(s) available (cgroup 4)")
    assert ("busy with other processes" in choice.source) is (threads < 4)


def test_explicit_threads_omp_num_threads_and_local_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "cpu_limits", lambda environ=None: {"affinity": 8})
    monkeypatch.setattr(runtime, "busy_cpus_of_others", lambda window_s: pytest.fail("sampled"))
    assert runtime.choose_threads(3, environ={}) == runtime.ThreadChoice(3, "--threads")
    assert runtime.choose_threads(0, environ={"OMP_NUM_THREADS": "2"}) == runtime.ThreadChoice(2, "OMP_NUM_THREADS")
    ranks = runtime.choose_threads(0, environ={"LOCAL_WORLD_SIZE": "4"})
    assert ranks.threads == 2 and "LOCAL_WORLD_SIZE 4" in ranks.source
    with pytest.raises(CrossdermError, match="--threads must be 0"):
        runtime.choose_threads(-1, environ={})
    with pytest.raises(CrossdermError, match="--threads must be 0"):
        runtime.choose_threads("fast", environ={})


@pytest.fixture
def torch_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Give torch its thread count back after a test sets it."""
    before = torch.get_num_threads()
    monkeypatch.setattr(runtime, "_choice", None)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("torch_threads")
def test_threads_option_reaches_torch_and_run_json_source() -> None:
    from crossderm.cli import main

    assert main(["cv", "--list-presets", "--threads", "1"]) == 0
    assert torch.get_num_threads() == 1
    assert runtime.thread_source() == "--threads"
    torch.set_num_threads(2)
    assert runtime.thread_source() == "torch default"  # changed since: the recorded choice no longer describes it


class _Configured(Exception):
    pass


@pytest.mark.parametrize("argv", [
    ["cv", "--config", "demo_b_joint", "--data", "d", "--out", "r"],
    ["predict", "--model", "r", "a.jpg", "--out", "p.csv"],
    ["explain", "--model", "r", "a.jpg", "--out", "cams"],
    ["export", "--model", "r", "--out", "m.onnx"],
    ["demo", "--out", "demo"],
    ["serve", "--model", "r", "--port", "0"],
])
def test_every_command_applies_threads_before_its_work(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from crossderm.cli import main

    asked: list[int] = []

    def configure(requested: int = 0, sample_s: float = 0.0) -> None:
        asked.append(requested)
        raise _Configured

    monkeypatch.setattr(runtime, "configure_threads", configure)
    with pytest.raises(_Configured):
        main([*argv, "--threads", "3"])
    assert asked == [3]
