"""``crossderm prepare``: official files -> harmonised manifest, lesion-grouped folds, image cache, audit.

Folds are assigned on every labelled metadata row *before* missing files are dropped, so the split of an
image never depends on which other images happen to be on disk (and matches the shipped split files).
The whole ``DATA_DIR`` is built in a staging folder and renamed into place only when complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from crossderm import __version__
from crossderm.datafolder import (
    AUDIT_JSON,
    AUDIT_MD,
    DATASET_INFO,
    MANIFEST,
    MANIFEST_COLUMNS,
    SPLITS,
    cache_file_name,
    open_cache,
)
from crossderm.errors import CrossdermError
from crossderm.fsutil import atomic_directory, atomic_write_json, atomic_write_text
from crossderm.labels import CLASSES, load_label_map
from crossderm.prepare.audit import build_audit, confirm_pairs, near_duplicate_pairs, render_audit
from crossderm.prepare.cache import build_cache
from crossderm.prepare.sources import SourceReport, read_ham10000, read_isic2019
from crossderm.split.folds import SPLIT_COLUMNS, assign_folds, folds_from_file, lesion_groups


@dataclass
class PrepareConfig:
    out: Path
    ham: Path | None = None
    isic: Path | None = None
    folds: int = 5
    seed: int = 0
    image_size: int = 224
    allow_missing: bool = False
    label_map: Path | None = None
    workers: int | None = None
    overwrite: bool = False
    max_hamming: int = 8
    splits: Path | None = None
    min_correlation: float = 0.95


def harmonised_table(config: PrepareConfig) -> tuple[pd.DataFrame, dict[str, SourceReport], dict]:
    """Every labelled image of the requested sources with its lesion group and fold."""
    if config.ham is None and config.isic is None:
        raise CrossdermError("give --ham and/or --isic")
    label_map = load_label_map(config.label_map)
    tables, reports = [], {}
    ham_ids = None
    if config.ham is not None:
        ham, reports["ham"] = read_ham10000(config.ham)
        ham_ids = set(ham["image_id"])
        tables.append(ham)
    if config.isic is not None:
        isic, reports["isic"] = read_isic2019(config.isic, label_map, ham_ids)
        tables.append(isic)
    table = pd.concat(tables, ignore_index=True)
    table["lesion_group"] = lesion_groups(table)
    if config.splits is None:
        table["fold"] = assign_folds(table, config.folds, config.seed)
    else:
        table["fold"] = folds_from_file(table, config.splits)
    return table, reports, label_map


def prepare(config: PrepareConfig) -> dict:
    """Build ``config.out``; returns the audit dictionary."""
    labelled, reports, label_map = harmonised_table(config)
    missing = labelled[labelled["path"] == ""]
    if len(missing) and not config.allow_missing:
        examples = ", ".join(f"{s}:{i}" for s, i in zip(missing["source"], missing["image_id"].head(5), strict=False))
        raise CrossdermError(
            f"{len(missing)} of {len(labelled)} labelled images have no image file (e.g. {examples}); "
            "pass --allow-missing to drop and count them"
        )
    kept = labelled[labelled["path"] != ""].reset_index(drop=True)
    if kept.empty:
        raise CrossdermError("no image files found for any labelled row")
    with atomic_directory(config.out, overwrite=config.overwrite) as staging:
        cache_name = cache_file_name(config.image_size)
        hashes = build_cache(kept["path"].tolist(), config.image_size, staging / cache_name, config.workers)
        kept["cache_index"] = np.arange(len(kept))
        kept["phash"] = [f"{h:016x}" for h in hashes]
        candidates = near_duplicate_pairs(hashes, config.max_hamming)
        pairs = confirm_pairs(open_cache(staging / cache_name), candidates, config.min_correlation)
        audit = build_audit(labelled, kept, reports, pairs, config.max_hamming, config.min_correlation)
        dataset = {
            "crossderm_version": __version__,
            "classes": list(CLASSES),
            "sources": sorted(kept["source"].unique()),
            "folds": int(labelled["fold"].nunique()),
            "seed": config.seed,
            "splits_file": str(config.splits) if config.splits else None,
            "image_size": config.image_size,
            "cache_file": cache_name,
            "aspect": "shorter side resized to image_size, centre square crop",
            "label_map": label_map,
            "images": len(kept),
            "inputs": {
                "ham": str(config.ham) if config.ham else None,
                "isic": str(config.isic) if config.isic else None,
            },
        }
        atomic_write_text(staging / MANIFEST, kept[MANIFEST_COLUMNS].to_csv(index=False))
        atomic_write_text(staging / SPLITS, labelled[SPLIT_COLUMNS].to_csv(index=False))
        atomic_write_json(staging / DATASET_INFO, dataset)
        atomic_write_json(staging / AUDIT_JSON, audit)
        atomic_write_text(staging / AUDIT_MD, render_audit(audit))
    return audit
