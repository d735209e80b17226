"""``crossderm prepare``: official files -> harmonised manifest, lesion-grouped folds, image cache, audit.

Folds are assigned on every labelled metadata row *before* missing files are dropped, so the split of an
image never depends on which other images happen to be on disk (and matches the shipped split files).
The whole ``DATA_DIR`` is built in a staging folder and renamed into place only when complete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from crossderm import __version__
from crossderm.colour import COLOR_CONSTANCY, apply_color_constancy
from crossderm.datafolder import (
    AUDIT_JSON,
    AUDIT_MD,
    DATASET_INFO,
    MANIFEST,
    MANIFEST_COLUMNS,
    SPLITS,
    cache_file_name,
    check_lesions_across_sources,
    open_cache,
)
from crossderm.errors import CrossdermError
from crossderm.fsutil import (
    atomic_directory,
    atomic_write_json,
    atomic_write_text,
    check_writable_folder,
    exclusive_lock,
    remove_stale_staging,
)
from crossderm.labels import CLASSES, load_label_map
from crossderm.prepare.audit import build_audit, confirm_pairs, near_duplicate_pairs, render_audit
from crossderm.prepare.cache import build_cache
from crossderm.prepare.generic import parse_source_spec, read_generic
from crossderm.prepare.metadata import read_sites
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
    ham_metadata: Path | None = None
    sites: Path | None = None
    sources: list[str] = field(default_factory=list)  # NAME=DIR of generic sources (crossderm.prepare.generic)
    color_constancy: list[str] = field(default_factory=list)  # extra cache variants besides the plain one


def harmonised_table(config: PrepareConfig) -> tuple[pd.DataFrame, dict[str, SourceReport], dict]:
    """Every labelled image of the requested sources with its lesion group and fold."""
    if config.ham is None and config.isic is None and not config.sources:
        raise CrossdermError("give --ham, --isic and/or --source NAME=DIR")
    if config.ham_metadata is not None and config.ham is None:
        raise CrossdermError("--ham-metadata needs --ham (the folder with the HAM10000 images)")
    label_map = load_label_map(config.label_map)
    tables, reports = [], {}
    ham_ids = None
    if config.ham is not None:
        ham, reports["ham"] = read_ham10000(config.ham, config.ham_metadata)
        ham_ids = set(ham["image_id"])
        tables.append(ham)
    if config.isic is not None:
        isic, reports["isic"] = read_isic2019(config.isic, label_map, ham_ids)
        tables.append(isic)
    for spec in config.sources:
        name, folder = parse_source_spec(spec)
        if name in reports:
            raise CrossdermError(f"--source {spec!r}: source {name!r} given twice")
        table, reports[name] = read_generic(name, folder)
        tables.append(table)
    table = pd.concat(tables, ignore_index=True)
    if config.sites is not None:
        table["site"] = _override_sites(table, config.sites, reports)
    check_lesions_across_sources(table, "the prepared sources")
    table["lesion_group"] = lesion_groups(table)
    if config.splits is None:
        table["fold"] = assign_folds(table, config.folds, config.seed)
    else:
        table["fold"] = folds_from_file(table, config.splits)
    return table, reports, label_map


def _override_sites(table: pd.DataFrame, path: Path, reports: dict[str, SourceReport]) -> pd.Series:
    """Sites from a ``--sites`` file where it lists the image; the counts go to the audit."""
    sites = read_sites(path)
    listed = table["image_id"].str.removesuffix("_downsampled").map(sites)
    for source, report in reports.items():
        mask = table["source"] == source
        report.sites_from_file = int(listed[mask].notna().sum())
    return listed.fillna(table["site"])


def _variants(config: PrepareConfig) -> list[str]:
    unknown = sorted(set(config.color_constancy) - set(COLOR_CONSTANCY))
    if unknown:
        raise CrossdermError(f"--color-constancy {unknown[0]}: not one of {', '.join(COLOR_CONSTANCY)}")
    return [m for m in dict.fromkeys(config.color_constancy) if m != "none"]


def derived_cache(data_dir: Path, image_size: int, method: str) -> str:
    """Write ``method``'s copy of the plain cache (computed per image from it) atomically; returns its name."""
    source = open_cache(data_dir / cache_file_name(image_size))
    name = cache_file_name(image_size, method)
    tmp = data_dir / f".{name}.tmp"
    target = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=source.shape)
    for start in range(0, len(source), 1024):
        target[start : start + 1024] = apply_color_constancy(source[start : start + 1024], method)
    target.flush()
    del target
    os.replace(tmp, data_dir / name)
    return name


def add_color_constancy(data_dir: Path, methods: list[str]) -> dict[str, str]:
    """Add colour-constancy caches to an existing DATA_DIR (no inputs needed: they derive from its cache)."""
    from crossderm.datafolder import load_dataset

    data = load_dataset(data_dir)
    caches = dict(data.info.get("caches", {}))
    for method in _variants(PrepareConfig(out=data_dir, color_constancy=methods)):
        if method not in caches:
            caches[method] = derived_cache(Path(data_dir), data.image_size, method)
    atomic_write_json(Path(data_dir) / DATASET_INFO, {**data.info, "caches": caches})
    return caches


def check_output_apart_from_inputs(config: PrepareConfig) -> None:
    """``--overwrite`` replaces DATA_DIR whole: it must not be, or contain, a download it reads."""
    out = Path(config.out).absolute()
    inputs = [config.ham, config.isic, config.ham_metadata, config.sites, config.label_map, config.splits]
    inputs += [parse_source_spec(spec)[1] for spec in config.sources]
    for path in (Path(p).absolute() for p in inputs if p is not None):
        if path == out or out in path.parents:
            raise CrossdermError(f"--out {config.out}: holds the input {path}; replacing it would delete the input "
                                 "(choose another --out)")


def prepare(config: PrepareConfig) -> dict:
    """Build ``config.out``; returns the audit dictionary. DATA_DIR is locked while it is written."""
    check_output_apart_from_inputs(config)
    check_writable_folder(config.out, "--out")
    with exclusive_lock(config.out, "crossderm prepare"):
        remove_stale_staging(Path(config.out).absolute().parent)
        return _prepare(config)


def _prepare(config: PrepareConfig) -> dict:
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
        caches = {method: derived_cache(staging, config.image_size, method) for method in _variants(config)}
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
            "caches": caches,
            "aspect": "shorter side resized to image_size, centre square crop",
            "label_map": label_map,
            "images": len(kept),
            "inputs": {
                "ham": str(config.ham) if config.ham else None,
                "ham_metadata": str(config.ham_metadata) if config.ham_metadata else None,
                "isic": str(config.isic) if config.isic else None,
                "sites": str(config.sites) if config.sites else None,
                "sources": list(config.sources),
            },
        }
        atomic_write_text(staging / MANIFEST, kept[MANIFEST_COLUMNS].to_csv(index=False))
        atomic_write_text(staging / SPLITS, labelled[SPLIT_COLUMNS].to_csv(index=False))
        atomic_write_json(staging / DATASET_INFO, dataset)
        atomic_write_json(staging / AUDIT_JSON, audit)
        atomic_write_text(staging / AUDIT_MD, render_audit(audit))
    return audit
