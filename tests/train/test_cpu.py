"""The CPU allocator tuning applies on glibc and leaves results unchanged."""

from __future__ import annotations

import platform

import pytest
import torch

from crossderm.train.augment import AugmentConfig, augment_batch
from crossderm.train.cpu import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_mallopt_is_accepted_on_glibc() -> None:
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # idempotent


def test_tuning_does_not_change_results() -> None:
    images = torch.rand(4, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    before = augment_batch(images, AugmentConfig(), torch.Generator().manual_seed(1))
    keep_freed_memory()
    after = augment_batch(images, AugmentConfig(), torch.Generator().manual_seed(1))
    assert torch.equal(before, after)
