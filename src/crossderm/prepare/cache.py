"""Decode-once image cache: every image is decoded, resized and stored as uint8 in one ``.npy`` file.

Training memory-maps the array and never touches a JPEG again. The decoding is :func:`crossderm.imaging.load_image`
(the aspect policy, documented in the README: the shorter side is resized to ``size`` and the centre square kept,
so a 4:3 HAM10000 image loses 1/8 of its width on each side; JPEGs are decoded with Pillow's DCT-domain
downscaling, which makes large originals cheap to read), the same function inference uses.
A 64-bit perceptual hash of each cached image is computed in the same pass for the near-duplicate audit.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image
from tqdm import tqdm

from crossderm.errors import CrossdermError
from crossderm.imaging import load_image

CHUNK = 64


def perceptual_hash(image: Image.Image) -> int:
    return int(str(imagehash.phash(image)), 16)


def _decode_chunk(job: tuple[int, list[str], int]) -> tuple[int, np.ndarray, np.ndarray, str | None]:
    start, paths, size = job
    pixels = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    hashes = np.empty(len(paths), dtype=np.uint64)
    for offset, path in enumerate(paths):
        try:
            image = load_image(path, size)
        except Exception as exc:  # any decoder failure is reported with its file, never a traceback wall
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return start + offset, pixels, hashes, f"{path}: cannot decode image ({reason})"
        pixels[offset] = np.asarray(image)
        hashes[offset] = perceptual_hash(image)
    return start, pixels, hashes, None


def _jobs(paths: list[str], size: int) -> Iterable[tuple[int, list[str], int]]:
    for start in range(0, len(paths), CHUNK):
        yield start, paths[start : start + CHUNK], size


def _chunks(paths: list[str], size: int, workers: int) -> Iterator[tuple[int, np.ndarray, np.ndarray, str | None]]:
    if workers <= 1:
        yield from map(_decode_chunk, _jobs(paths, size))
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_decode_chunk, _jobs(paths, size))


def build_cache(paths: list[str], size: int, out_file: Path, workers: int | None = None) -> np.ndarray:
    """Decode ``paths`` in order into ``out_file`` (N, size, size, 3) uint8; returns the perceptual hashes."""
    workers = workers or os.cpu_count() or 1
    cache = np.lib.format.open_memmap(out_file, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3))
    hashes = np.zeros(len(paths), dtype=np.uint64)
    with tqdm(total=len(paths), desc=f"decode -> {size}px cache", unit="img", disable=None) as progress:
        for start, pixels, chunk_hashes, error in _chunks(paths, size, workers):
            if error is not None:
                raise CrossdermError(error)
            cache[start : start + len(pixels)] = pixels
            hashes[start : start + len(pixels)] = chunk_hashes
            progress.update(len(pixels))
    cache.flush()
    del cache
    return hashes
