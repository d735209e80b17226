"""CPU allocator tuning for training on machines without an accelerator.

glibc hands every freed block above its mmap threshold straight back to the kernel, so each batch's
multi-megabyte tensors (augmentation buffers, activations) are page-faulted in afresh on every step. Raising
the mmap and trim thresholds keeps freed blocks for reuse, which PyTorch's CPU performance guide recommends
(there via jemalloc/tcmalloc). Measured here: the cached loader with augmentation goes from 11-16x to
22-24x a Pillow DataLoader (``benchmarks/bench_input_pipeline.py``). The process keeps its peak heap instead
of returning it, which a training process reaches again at the next step anyway.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 1024 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed large blocks for reuse; False where the C library has no ``mallopt``."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
