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
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass

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
