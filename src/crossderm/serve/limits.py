"""The bounds of one request, shared by the server (checks before decoding) and the model worker (enforcement).

Kept apart from both sides so the worker process, which receives them as JSON, never imports the web framework.
"""

from __future__ import annotations

from dataclasses import dataclass

from crossderm.defaults import SERVE_MAX_PIXELS
from crossderm.imaging import MAX_ASPECT

# crossderm.imaging.ImageError.kind -> the HTTP status of a refused image
STATUS_OF_IMAGE_ERROR = {"too_large": 413, "unsupported": 415, "corrupt": 422, "missing": 422, "bad_shape": 422}


@dataclass(frozen=True)
class ServeLimits:
    """What one request may cost: the server refuses what it can see up front (size, pixels, aspect, the decode's
    estimated memory, a full queue), the worker process enforces the rest while it runs (time, CPU, memory)."""

    max_upload_bytes: int = 10 * 2**20
    max_pixels: int = SERVE_MAX_PIXELS
    timeout_s: float = 30.0  # per request, queueing included
    max_queue: int = 16
    max_aspect: float = MAX_ASPECT
    max_memory_bytes: int = 2**30  # per request, over the worker's idle size (decode + model work)
    max_work_s: float = 10.0  # how long one request may keep the worker busy (wall clock), so others wait little
    max_cpu_s: float | None = None  # per request CPU seconds (all threads); None: max_work_s x the worker's threads


def mib(n_bytes: int) -> str:
    """A byte count as the messages show it: ``10 MiB``, ``0.25 MiB``."""
    return f"{n_bytes / 2**20:.3g} MiB"
