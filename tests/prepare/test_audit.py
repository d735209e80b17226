"""The near-duplicate audit on images made for it: true copies found, lookalikes rejected, leaks classified."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from crossderm.prepare.audit import build_audit, confirm_pairs, near_duplicate_pairs
from crossderm.prepare.cache import perceptual_hash
from crossderm.prepare.sources import SourceReport


def blob(rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A dark irregular blob on skin: the kind of image pHash alone confuses."""
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    radius = 0.25 + 0.05 * np.sin(rng.uniform(0, 6) + 5 * np.arctan2(yy, xx))
    lesion = np.hypot(xx + rng.normal(0, 0.05), yy + rng.normal(0, 0.05)) < radius
    image = np.where(lesion[..., None], rng.uniform(40, 90, 3), rng.uniform(170, 220, 3))
    return np.clip(image + rng.normal(0, 25, image.shape), 0, 255).astype(np.uint8)


def test_copies_across_a_fold_and_a_source_are_found_and_classified() -> None:
    rng = np.random.default_rng(0)
    images = [blob(rng) for _ in range(12)]
    noisy_copy = np.clip(images[0].astype(int) + rng.integers(-2, 3, images[0].shape), 0, 255).astype(np.uint8)
    images += [noisy_copy, images[1].copy(), images[2].copy()]  # rows 12, 13, 14 duplicate rows 0, 1, 2
    cache = np.stack(images)
    table = pd.DataFrame({
        "image_id": [f"img{i}" for i in range(15)],
        "source": ["ham"] * 12 + ["ham", "isic", "ham"],
        "site": "x",
        "label": ["nv"] * 15,
        "lesion_id": [f"L{i}" for i in range(15)],
        "lesion_group": [f"g{i}" for i in range(15)],
        "fold": [i % 5 for i in range(12)] + [1, 1, 2],  # copy of row 0 (fold 0) in fold 1; row 2 stays in fold 2
        "path": "p",
        "age": "50", "sex": "", "anatom_site": "torso",
    })
    hashes = np.array([perceptual_hash(Image.fromarray(image)) for image in images], dtype=np.uint64)
    candidates = near_duplicate_pairs(hashes, 8)
    confirmed = confirm_pairs(cache, candidates, 0.95)
    found = {(int(i), int(j)) for i, j, *_ in confirmed}
    assert {(0, 12), (1, 13), (2, 14)} <= found
    assert found <= {(0, 12), (1, 13), (2, 14)}, "different lesions must not be confirmed"
    assert all(corr >= 950 for *_, corr in confirmed)
    audit = build_audit(table, table, {"ham": SourceReport(rows=13), "isic": SourceReport(rows=2)}, confirmed, 8, 0.95)
    leaks = audit["near_duplicates"]
    assert (leaks["pairs"], leaks["cross_source"], leaks["cross_fold"]) == (3, 1, 1)
    kinds = {(e["image_a"], e["image_b"]) for e in leaks["examples"]}
    assert kinds == {("img0", "img12"), ("img1", "img13")}  # the same-fold copy is expected, not reported


def test_hamming_search_equals_a_direct_loop() -> None:
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 2**63, size=300, dtype=np.uint64)
    hashes[7] = hashes[3] ^ np.uint64(0b1011)  # 3 bits apart
    found = near_duplicate_pairs(hashes, 12, block=64)
    expected = {
        (i, j, bin(int(hashes[i]) ^ int(hashes[j])).count("1"))
        for i in range(300) for j in range(i + 1, 300)
        if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= 12
    }
    assert {tuple(map(int, row)) for row in found} == expected
    assert (3, 7, 3) in expected
