"""The process runtime: device resolution, and the allocator tuning as an explicit call with a visible effect."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import torch

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
    import crossderm.runtime as runtime

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
