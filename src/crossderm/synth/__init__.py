"""Deterministic synthetic dermoscopy data in the exact official HAM10000 / ISIC 2019 download layouts.

Why: the real images cannot ship with the package or its tests, yet every stage needs inputs with the
official quirks (file names, CRLF vs LF, ``_downsampled`` ids, blank lesion ids, HAM10000 contained in
ISIC 2019 under the same ids, bytes and lesion ids, several views per lesion) plus a class signal that is
learnable but not trivial and a genuine acquisition-site shift, so that cross-dataset experiments behave
qualitatively like the real ones.

``plan`` decides every lesion's label, ids, views and metadata and writes the tables; ``paint`` draws the
pixels; ``generator.generate`` wires the two and writes the folders atomically. Every random draw comes
from a numpy generator keyed by ``(seed, site, lesion, view)``, so one seed and one set of sizes always give
byte-identical files.

This module holds only the generator's defaults, as plain numbers: ``crossderm synth --help`` imports it and
must not pay for numpy or PIL, and ``generate`` and the command read the same values from here.
"""

from __future__ import annotations

DEFAULT_HAM_LESIONS = 740  # about 1,000 HAM10000 images
DEFAULT_ISIC_LESIONS = 610  # about 1,000 ISIC-only images over the BCN-like and MSK-like sites
DEFAULT_MIN_PER_CLASS = 6  # lesions per class and site, so that every class appears in every fold
DEFAULT_SEED = 0
DEFAULT_IMAGE_SCALE = 1.0  # HAM 160x120, BCN 192x192, MSK 224x168
MIN_IMAGE_SCALE, MAX_IMAGE_SCALE = 0.25, 4
