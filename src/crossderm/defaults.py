"""Defaults shared by several commands, defined once (no heavy imports: the CLI reads them for ``--help``)."""

from __future__ import annotations

N_BOOTSTRAP = 2000  # resamples behind every confidence interval
BOOTSTRAP_SEED = 0
CI_LEVEL = 0.95
# The source every other source is compared with in a generalisation gap (the paper's HAM10000 -> others).
REFERENCE_SOURCE = "ham"
# Test-time augmentation: identity, horizontal flip, vertical flip, both (crossderm.models.tta.VIEW_FLIPS).
MAX_TTA_VIEWS = 4
TTA_VIEW_CHOICES = range(1, MAX_TTA_VIEWS + 1)
# Side (px) of the square images a prepared cache holds and a model takes: below 8 the stem's downsampling leaves
# nothing; 4096 is far beyond any dermoscopy model and bounds the cache a typo could ask for.
MIN_IMAGE_SIZE = 8
MAX_IMAGE_SIZE = 4096
# Largest image (width x height, from the header, before decoding) that predict/explain and serve accept. Below
# Pillow's decompression-bomb threshold (89.5 MP), so users meet this clear cap first; dermoscopy originals are a
# few tens of megapixels at most. The web server's is lower: its uploads come from anyone who can reach it.
PREDICT_MAX_PIXELS = 64_000_000
SERVE_MAX_PIXELS = 50_000_000
# Per-site / subgroup evaluation (crossderm.evaluate.groups): the groupings `--by` accepts, and the fewest images a
# cell needs to get metric values. Below 30 images a 7-class macro-F1 rests on one or two images of most classes and
# even accuracy's 95 % CI is about +/-0.18 wide (binomial, p = 0.5), so such a cell is reported as "too few (n = k)",
# never as a number, let alone as 0.
GROUPINGS = ("site", "sex", "age_bin", "anatom_site")
MIN_GROUP_IMAGES = 30
# Out-of-distribution scores of a prediction (crossderm.models.ood computes them, evaluate.ood scores them): the
# predictions-CSV columns, higher = less like the training data.
OOD_COLUMNS = ("ood_msp", "ood_energy", "ood_mahalanobis")
