"""Batches from the image cache carry the right pixels and labels; background errors surface."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crossderm.models.preprocess import Normalise
from crossderm.train.augment import AugmentConfig
from crossderm.train.loader import CacheBatches, prefetch


def test_batches_match_the_cache() -> None:
    rng = np.random.default_rng(0)
    cache = rng.integers(0, 256, size=(50, 8, 8, 3), dtype=np.uint8)
    rows = np.array([40, 3, 17, 9, 25, 31, 0])
    labels = np.arange(len(rows))
    batches = CacheBatches(cache, rows, labels, 3, torch.device("cpu"), Normalise((0, 0, 0), (1, 1, 1), False))
    order = torch.tensor([6, 2, 4, 0, 1, 5, 3])
    seen = {}
    for images, batch_labels in batches.batches(order):
        assert images.shape[1:] == (3, 8, 8)
        for image, label in zip(images, batch_labels, strict=True):
            seen[int(label)] = image
    assert sorted(seen) == list(range(len(rows)))
    for position, image in seen.items():
        expected = torch.from_numpy(cache[rows[position]]).permute(2, 0, 1).float() / 255
        assert torch.allclose(image, expected)


def test_resident_cache_gives_the_same_batches_as_the_host_gather() -> None:
    """The GPU path (pixels copied to the device once, gathered there) must train exactly like the host path,
    so a run does not change with whether its cache fitted in GPU memory; ``device_cache=True`` runs it on CPU."""
    rng = np.random.default_rng(1)
    cache = rng.integers(0, 256, size=(60, 16, 16, 3), dtype=np.uint8)
    rows = rng.permutation(60)[:37]
    labels = rng.integers(0, 7, size=len(rows))
    normalise = Normalise((0.4, 0.5, 0.6), (0.2, 0.25, 0.3), True)
    host = CacheBatches(cache, rows, labels, 8, torch.device("cpu"), normalise, device_cache=False)
    resident = CacheBatches(cache, rows, labels, 8, torch.device("cpu"), normalise, device_cache=True)
    assert host.on_device is None and resident.on_device is not None
    assert resident.rebatched(5).on_device is resident.on_device  # TTA batches share the copy
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(3))
    streams = [
        list(loader.batches(order, AugmentConfig(), torch.Generator().manual_seed(7))) for loader in (host, resident)
    ]
    assert [len(images) for images, _ in streams[0]] == [8, 8, 8, 8, 5]
    for (host_images, host_labels), (resident_images, resident_labels) in zip(*streams, strict=True):
        assert torch.equal(host_labels, resident_labels)
        assert torch.equal(host_images, resident_images)


def test_normalise_uses_mean_and_std() -> None:
    images = torch.full((1, 3, 2, 2), 0.5)
    out = Normalise((0.5, 0.25, 0.0), (0.5, 0.25, 0.5), channels_last=True)(images)
    assert out[0, :, 0, 0].tolist() == [0.0, 1.0, 1.0]
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_prefetch_keeps_order_and_reraises() -> None:
    assert list(prefetch(iter(range(100)), depth=3)) == list(range(100))

    def broken():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(prefetch(broken(), depth=2))
