"""Batches straight from the decode-once image cache, prepared on the training device.

A background thread gathers the next batches' uint8 pixels from the memory-mapped cache (numpy copies
release the GIL) into pinned memory while the device computes; conversion to float, augmentation and
normalisation then run on the device. On a GPU with room to spare the whole uint8 cache is copied to
device memory once and batches are gathered there, so the host does no per-step work at all.
No JPEG is decoded after ``crossderm prepare``.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np
import torch

from crossderm.colour import illuminants
from crossderm.models.preprocess import Normalise, to_unit_float
from crossderm.train.augment import AugmentConfig, augment_batch

T = TypeVar("T")
DEVICE_CACHE_FRACTION = 0.3


def prefetch(items: Iterable[T], depth: int) -> Iterator[T]:
    """Run ``items`` in a background thread, ``depth`` results ahead; errors re-raise in the caller."""
    if depth <= 0:
        yield from items
        return
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                buffer.put(item)
            buffer.put(done)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            buffer.put(exc)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (item := buffer.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.01)


class CacheBatches:
    """Batches ``(images, labels)`` of a subset of the cache, in a given order."""

    def __init__(
        self,
        cache: np.ndarray,
        rows: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        device: torch.device,
        normalise: Normalise,
        prefetch_depth: int = 3,
        device_cache: bool | None = None,
        metadata: np.ndarray | None = None,
    ) -> None:
        """``metadata`` (n, d) float32, one row per image, travels with its image: batches are then
        ``((images, metadata), labels)`` for a metadata-fusion model."""
        self.cache = cache
        self.metadata = None if metadata is None else torch.from_numpy(np.asarray(metadata, dtype=np.float32))
        self._illuminants: torch.Tensor | None = None
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = torch.tensor(np.array(labels, dtype=np.int64))
        self.batch_size = batch_size
        self.device = device
        self.normalise = normalise
        self.prefetch_depth = prefetch_depth
        self.on_device = self._device_copy(device_cache)

    def _device_copy(self, wanted: bool | None) -> torch.Tensor | None:
        """The subset's pixels resident on the device: when asked (``True``), or by default (``None``) on a
        GPU with room for them. Off by default on the CPU, where the memory-mapped cache already sits in RAM;
        asking for it there runs the GPU path's gather on the CPU (the tests compare it with the host path)."""
        if wanted is False or (wanted is None and self.device.type != "cuda"):
            return None
        needed = len(self.rows) * int(np.prod(self.cache.shape[1:]))
        if wanted is None and needed > DEVICE_CACHE_FRACTION * torch.cuda.mem_get_info(self.device)[0]:
            return None
        pixels = torch.empty((len(self.rows), *self.cache.shape[1:]), dtype=torch.uint8, device=self.device)
        for start in range(0, len(self.rows), 4096):
            chunk = torch.from_numpy(np.ascontiguousarray(self.cache[self.rows[start : start + 4096]]))
            pixels[start : start + len(chunk)] = chunk.to(self.device)
        return pixels

    def __len__(self) -> int:
        return len(self.rows)

    def rebatched(self, batch_size: int) -> CacheBatches:
        """The same images (and device copy) in batches of another size, e.g. for TTA's stacked views."""
        other = copy.copy(self)
        other.batch_size = batch_size
        return other

    def _host_batches(self, order: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        pin = self.device.type == "cuda"
        for start in range(0, len(order), self.batch_size):
            positions = np.sort(order[start : start + self.batch_size].numpy())
            pixels = torch.from_numpy(np.ascontiguousarray(self.cache[self.rows[positions]]))
            yield (pixels.pin_memory() if pin else pixels), self.labels[positions]

    def _resident_batches(
        self, resident: torch.Tensor, order: torch.Tensor
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The same batches as ``_host_batches`` (positions sorted within a batch), gathered on the device."""
        order, labels = order.to(self.device), self.labels.to(self.device)
        for start in range(0, len(order), self.batch_size):
            positions = order[start : start + self.batch_size].sort().values
            yield resident[positions], labels[positions]

    def batches(
        self,
        order: torch.Tensor | None = None,
        augment: AugmentConfig | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield normalised float batches on the device; ``order`` defaults to the subset order.

        Both sources give the same batches in the same order, so a run does not depend on whether its
        cache fitted in device memory."""
        order = torch.arange(len(self.rows)) if order is None else order
        if self.on_device is not None:
            source: Iterable = self._resident_batches(self.on_device, order)
        else:
            source = prefetch(self._host_batches(order), self.prefetch_depth)
        pool = self.illuminants() if augment is not None and augment.illuminant > 0 else None
        for start, (pixels, labels) in zip(range(0, len(order), self.batch_size), source, strict=True):
            images = to_unit_float(pixels, self.device)
            if augment is not None:
                images = augment_batch(images, augment, generator, pool)
            images = self.normalise(images)
            if self.metadata is not None:
                positions = order[start : start + self.batch_size].sort().values.cpu()
                images = (images, self.metadata[positions].to(self.device, non_blocking=True))
            yield images, labels.to(self.device, non_blocking=True)

    def illuminants(self) -> torch.Tensor:
        """The subset's Shades-of-Gray illuminants (computed once from the cache), for illuminant augmentation."""
        if self._illuminants is None:
            chunks = [illuminants(self.cache[self.rows[start : start + 1024]])
                      for start in range(0, len(self.rows), 1024)]
            self._illuminants = torch.from_numpy(np.concatenate(chunks).astype(np.float32)).to(self.device)
        return self._illuminants
