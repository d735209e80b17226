"""The process runtime: which device, which precision, which rank of a distributed job, and CPU tuning.

Training, prediction and serving all resolve their device here. Nothing here changes the process as a side
effect of a lookup: the glibc allocator tuning is the explicit :func:`tune_cpu_allocator` call that the
training command makes for CPU runs.

Allocator tuning, why: glibc hands every freed block above its mmap threshold straight back to the kernel, so
each batch's multi-megabyte tensors (augmentation buffers, activations) are page-faulted in afresh on every
step. Raising the mmap and trim thresholds keeps freed blocks for reuse, which PyTorch's CPU performance guide
recommends (there via jemalloc/tcmalloc). Measured here: the cached loader with augmentation goes from 11-16x
to 22-24x a Pillow DataLoader (``benchmarks/bench_input_pipeline.py``). The process keeps its peak heap, which a
training process reaches again at the next step anyway.

Threads, why: torch's intra-op threads run every operator in lock step (an OpenMP barrier at its end), so one
thread that the kernel parks behind another process stalls every operator. With torch's default of one
thread per core and one other CPU-bound job on the same 2 cores, the demo model's training step fell 3-50x
(measured, ``benchmarks/bench_contention.py`` and benchmarks/README.md), while one thread kept ~2/3 of the quiet
2-thread rate (a fair share is 1/2). :func:`configure_threads` (each command's ``--threads``; 0 = auto) uses
the CPUs this process may actually use (:func:`available_cpus`: affinity mask, cgroup CPU quota, Slurm), less
the CPUs that other processes keep busy when the command starts (:func:`busy_cpus_of_others`).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from crossderm.errors import CrossdermError

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 1024 * 1024 * 1024


@dataclass(frozen=True)
class Runtime:
    """Where and how this process computes: device, bf16 autocast, and its place in a distributed job."""

    device: torch.device
    bf16: bool
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def resolve(cls, device: str = "auto", amp: str = "auto") -> Runtime:
        """``device='auto'`` picks CUDA when present; ``amp='auto'`` uses bf16 only on CUDA (far slower on CPU)."""
        rank = dist.get_rank() if dist.is_initialized() else 0
        world = dist.get_world_size() if dist.is_initialized() else 1
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise CrossdermError(f"--device {device}: CUDA is not available on this machine")
            if dist.is_initialized():
                device = f"cuda:{torch.cuda.current_device()}"
        try:
            resolved = torch.device(device)
        except RuntimeError:
            raise CrossdermError(f"--device {device}: not a device (auto, cpu, cuda or cuda:N)") from None
        bf16 = amp == "bf16" or (amp == "auto" and resolved.type == "cuda")
        return cls(device=resolved, bf16=bf16, rank=rank, world_size=world)


def tune_cpu_allocator() -> bool:
    """Ask glibc to keep freed large blocks for reuse; False where the C library has no ``mallopt``."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def init_distributed() -> bool:
    """Join a torchrun job when launched by one (RANK/WORLD_SIZE set); NCCL on GPUs, gloo on CPU."""
    if "RANK" not in os.environ or dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend)
    return True


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# --- CPU threads --------------------------------------------------------------------------------------------

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
PROC_STAT = Path("/proc/stat")
V1_CPU_FOLDERS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # /proc/stat's unit, per second
ADAPTIVE = "adaptive"  # --threads adaptive: leave out the CPUs other processes keep busy at the start
BUSY_SAMPLE_S = 0.2  # how long configure_threads watches the other processes' CPU use before choosing


@dataclass(frozen=True)
class ThreadChoice:
    """The intra-op thread count a command chose, and where it came from (recorded in run.json)."""

    threads: int
    source: str


_choice: ThreadChoice | None = None
_interop_set = False


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _own_cgroups(proc_cgroup: Path) -> dict[str, str]:
    """Controller -> this process's cgroup path ('' for the cgroup v2 unified hierarchy)."""
    paths: dict[str, str] = {}
    for line in (_read(proc_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(","):
                paths[controller] = parts[2]
    return paths


def _with_ancestors(base: Path, own: str | None) -> list[Path]:
    """``base`` (the mount, which is the process's own cgroup inside a container) and, below it, every folder
    on the way to the process's cgroup path, where those exist (a host or Slurm job: limits apply at each level)."""
    folders = [base]
    parts = Path((own or "/").lstrip("/")).parts
    for depth in range(1, len(parts) + 1):
        folders.append(base.joinpath(*parts[:depth]))
    return folders


def _v2_quota(folder: Path) -> float | None:
    fields = (_read(folder / "cpu.max") or "").split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int(_read(folder / "cpu.cfs_quota_us") or "-1")
        period = int(_read(folder / "cpu.cfs_period_us") or "0")
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None  # -1: no quota


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP) -> float | None:
    """CPUs' worth of time this process's cgroup may use per period (cgroup v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us / cpu.cfs_period_us``; the smallest along the path), or None when there is no quota."""
    own = _own_cgroups(proc_cgroup)
    folders = _with_ancestors(cgroup_root, own.get(""))
    for name in V1_CPU_FOLDERS:
        if (cgroup_root / name).is_dir():
            folders += _with_ancestors(cgroup_root / name, own.get("cpu"))
    quotas = [q for folder in folders if (q := _v2_quota(folder) or _v1_quota(folder)) is not None]
    return min(quotas) if quotas else None


def cpu_limits(
    cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP, environ: Mapping[str, str] | None = None
) -> dict[str, float]:
    """Every limit on this process's CPUs that applies: ``affinity`` (or ``cpu_count`` where the OS has no
    affinity mask), ``cgroup`` (a CPU quota, fractional), ``SLURM_CPUS_PER_TASK``."""
    environ = os.environ if environ is None else environ
    limits: dict[str, float] = {}
    if hasattr(os, "sched_getaffinity"):
        limits["affinity"] = len(os.sched_getaffinity(0))
    else:
        limits["cpu_count"] = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        limits["cgroup"] = quota
    slurm = environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        limits["SLURM_CPUS_PER_TASK"] = int(slurm)
    return limits


def available_cpus(
    cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP, environ: Mapping[str, str] | None = None
) -> int:
    """The CPUs this process may use: the smallest of :func:`cpu_limits`, at least 1.

    A fractional quota is rounded down (1.5 CPUs -> 1 thread): two lock-step threads under a 1.5-CPU quota are
    both throttled for the last quarter of every period, so they reach ~0.75 x their unthrottled rate, which on
    the 2 cores measured here (2 threads ~1.3 x 1 thread for the demo model) is no faster than one thread that is
    never throttled; below 1.5 CPUs two threads are slower. The half CPU left over runs the loader's thread.
    """
    return _whole_cpus(cpu_limits(cgroup_root, proc_cgroup, environ))


def _whole_cpus(limits: Mapping[str, float]) -> int:
    return max(1, math.floor(min(limits.values()) + 1e-9))


def cpu_ticks(cpus: set[int] | None = None, proc_stat: Path = PROC_STAT) -> tuple[int, int] | None:
    """(busy, total) clock ticks of ``cpus`` (all when None) since boot from ``/proc/stat``; None without it."""
    text = _read(proc_stat)
    if text is None:
        return None
    busy = total = 0
    for line in text.splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or not name[3:].isdigit() or (cpus is not None and int(name[3:]) not in cpus):
            continue
        ticks = [int(field) for field in fields[:8]]  # user nice system idle iowait irq softirq steal
        total += sum(ticks)
        busy += sum(ticks) - ticks[3] - ticks[4]
    return busy, total


def busy_cpus_of_others(
    window_s: float = BUSY_SAMPLE_S, proc_stat: Path = PROC_STAT, sleep: Callable[[float], None] = time.sleep
) -> float:
    """How many of this process's CPUs other processes keep busy, watched for ``window_s`` (0.0 where the OS
    has no ``/proc/stat``). The process's own CPU time in the window is taken off."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    before, own_before = cpu_ticks(cpus, proc_stat), time.process_time()
    sleep(window_s)
    after, own = cpu_ticks(cpus, proc_stat), time.process_time() - own_before
    if before is None or after is None or after[1] <= before[1]:
        return 0.0
    n_cpus = len(cpus) if cpus is not None else max(1, os.cpu_count() or 1)
    seconds = (after[1] - before[1]) / n_cpus / CLOCK_TICKS  # the window as /proc/stat counted it
    return max(0.0, ((after[0] - before[0]) / CLOCK_TICKS - own) / seconds)


def choose_threads(requested: int | str = 0, environ: Mapping[str, str] | None = None,
                   sample_s: float = BUSY_SAMPLE_S) -> ThreadChoice:
    """``requested`` > 0 is used as given. 0 (auto): ``OMP_NUM_THREADS`` when set (torchrun sets it for several
    processes per machine); else :func:`available_cpus`, shared by ``LOCAL_WORLD_SIZE`` processes, at least 1.
    ``"adaptive"``: auto, less the CPUs other processes keep busy now (rounded to the nearest CPU).

    Auto depends only on the CPU allocation, so the same machine and allocation give the same thread count and
    therefore bit-identical training (the reduction order of CPU kernels follows the thread count). Adaptive
    trades that for speed beside other jobs: a rerun or ``--resume`` may then pick another count and differ in
    the last digits (see benchmarks/README.md, contention)."""
    environ = os.environ if environ is None else environ
    adaptive = requested == ADAPTIVE
    requested = 0 if adaptive else requested
    if not isinstance(requested, int) or requested < 0:
        raise CrossdermError(f"--threads must be 0 (auto), a positive count or {ADAPTIVE}, got {requested}")
    if requested:
        return ThreadChoice(requested, "--threads")
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return ThreadChoice(int(omp), "OMP_NUM_THREADS")
    limits = cpu_limits(environ=environ)
    limiting = min(limits, key=limits.__getitem__)
    threads = _whole_cpus(limits)
    source = f"auto: {threads} CPU(s) available ({limiting} {limits[limiting]:g})"
    local = environ.get("LOCAL_WORLD_SIZE", "").strip()
    if local.isdigit() and int(local) > 1:  # sibling ranks start at the same time: their start-up is not contention
        threads = max(1, threads // int(local))
        return ThreadChoice(threads, f"{source} / LOCAL_WORLD_SIZE {local} -> {threads}")
    if adaptive and threads > 1 and sample_s > 0:
        others = busy_cpus_of_others(sample_s)
        if round(others) >= 1:
            threads = max(1, threads - round(others))
            source += f", {others:.1f} busy with other processes -> {threads}"
    return ThreadChoice(threads, source)


def configure_threads(requested: int | str = 0, sample_s: float = BUSY_SAMPLE_S) -> ThreadChoice:
    """Set torch's intra-op threads (and, once, its inter-op threads) from :func:`choose_threads`; every command
    calls this first with its ``--threads``. On CUDA the host threads still run the loader's and the optimiser's
    host work."""
    global _choice, _interop_set
    choice = choose_threads(requested, sample_s=sample_s)
    torch.set_num_threads(choice.threads)
    if not _interop_set:
        _interop_set = True
        with contextlib.suppress(RuntimeError):  # torch allows it once, before any inter-op work: else kept
            torch.set_num_interop_threads(choice.threads)
    _choice = choice
    return choice


def thread_source() -> str:
    """Where this process's torch thread count came from (for run.json)."""
    return _choice.source if _choice is not None and _choice.threads == torch.get_num_threads() else "torch default"
