"""The prepared-data contract: what ``crossderm prepare`` writes into DATA_DIR and how every consumer reads it.

::

    DATA_DIR/
      manifest.csv     one row per cached image (MANIFEST_COLUMNS)
      splits.csv       every labelled row with its fold (reusable with ``prepare --splits``)
      dataset.json     classes, sources, folds, image size, cache file name, label map, inputs
      audit.json/.md   counts, overlap removed, near-duplicates
      images_<N>.npy   uint8 (n, N, N, 3) decode-once cache, row = manifest ``cache_index``

Readers re-check the manifest's invariants (labels, folds, lesion grouping, cache indices) before any work, so
a hand-edited or stale manifest fails at once with a one-line error instead of leaking or failing mid-run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crossderm.defaults import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from crossderm.errors import CrossdermError, at
from crossderm.fsutil import read_json
from crossderm.labels import CLASSES

# A download made by `crossderm synth` carries this file, so data folders and model cards can say "synthetic".
SYNTHETIC_MARKER = "crossderm-synth.json"
MANIFEST = "manifest.csv"
SPLITS = "splits.csv"
DATASET_INFO = "dataset.json"
AUDIT_JSON = "audit.json"
AUDIT_MD = "audit.md"
MANIFEST_COLUMNS = [
    "image_id", "source", "site", "label", "original_label", "lesion_id", "age", "sex", "anatom_site",
    "lesion_group", "fold", "path", "cache_index", "phash",
]
# Carried from the manifest into every predictions CSV, for per-site and subgroup evaluation.
METADATA_COLUMNS = ["site", "age", "sex", "anatom_site"]
TEXT_COLUMNS = {name: str for name in MANIFEST_COLUMNS if name not in ("fold", "cache_index")}


def cache_file_name(image_size: int, color_constancy: str = "none") -> str:
    """``images_<N>.npy``, or ``images_<N>_<method>.npy`` for a colour-constancy variant of the same images."""
    return f"images_{image_size}.npy" if color_constancy == "none" else f"images_{image_size}_{color_constancy}.npy"


def check_grouped_folds(table: pd.DataFrame, where: str = "folds") -> None:
    """Fail loudly if any lesion group appears in two folds, or any row has no fold."""
    if (table["fold"] < 0).any():
        raise CrossdermError(f"{where}: {int((table['fold'] < 0).sum())} images were assigned no fold")
    spread = table.groupby("lesion_group")["fold"].nunique()
    leaking = spread[spread > 1]
    if len(leaking):
        raise CrossdermError(
            f"{where}: lesion leakage: {len(leaking)} lesion groups span several folds, e.g. {leaking.index[0]!r}"
        )


def check_lesions_across_sources(table: pd.DataFrame, where: str) -> None:
    """A lesion id in two sources would be split between folds (folds are drawn per source): refuse it."""
    named = table[table["lesion_id"] != ""]
    spread = named.groupby("lesion_id")["source"].nunique()
    shared = spread[spread > 1]
    if len(shared):
        lesion = shared.index[0]
        sources = sorted(named.loc[named["lesion_id"] == lesion, "source"].unique())
        raise CrossdermError(
            f"{where}: lesion {lesion!r} appears in sources {' and '.join(sources)} ({len(shared)} such lesions): "
            "its images would land in different folds and leak; remove the duplicate images or give them distinct "
            "lesion ids"
        )


@dataclass(frozen=True)
class PreparedData:
    """A prepared DATA_DIR: its manifest, its ``dataset.json`` and (memory-mapped on demand) its cache."""

    path: Path
    manifest: pd.DataFrame
    info: dict[str, Any]

    @property
    def caches(self) -> dict[str, str]:
        """Colour-constancy method -> cache file name (``none`` always present)."""
        return {"none": self.info["cache_file"], **self.info.get("caches", {})}

    def cache_path(self, color_constancy: str = "none") -> Path:
        if color_constancy not in self.caches:
            raise CrossdermError(
                f"{self.path}: has no {color_constancy} image cache (have {', '.join(self.caches)}); add it with "
                f"`crossderm prepare --out {self.path} --color-constancy {color_constancy}`"
            )
        return self.path / self.caches[color_constancy]

    def open_cache(self, color_constancy: str = "none") -> np.ndarray:
        path = self.cache_path(color_constancy)
        cache = open_cache(path)
        rows = self.manifest["cache_index"]
        if len(rows) and (rows.max() >= len(cache) or cache.shape[1:] != (self.image_size, self.image_size, 3)):
            raise CrossdermError(
                f"{path}: holds {len(cache)} images of shape {cache.shape[1:]}, but the manifest needs "
                f"{rows.max() + 1} of {(self.image_size, self.image_size, 3)} (stale cache? run `crossderm prepare`)"
            )
        return cache

    @property
    def image_size(self) -> int:
        return int(self.info["image_size"])

    @property
    def folds(self) -> list[int]:
        return sorted(int(f) for f in self.manifest["fold"].unique())


def open_cache(path: str | Path) -> np.ndarray:
    """Memory-map a cache read-only: workers share the page cache instead of copying the array."""
    try:
        return np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise CrossdermError(f"{path}: image cache not found (run `crossderm prepare`)") from None
    except (OSError, ValueError) as exc:
        raise CrossdermError(f"{path}: not a readable image cache ({' '.join(str(exc).split())})") from None


def load_dataset(data_dir: str | Path) -> PreparedData:
    """Read and check a prepared DATA_DIR."""
    data_dir = Path(data_dir)
    manifest_path, info_path = data_dir / MANIFEST, data_dir / DATASET_INFO
    for path in (manifest_path, info_path):
        if not path.is_file():
            raise CrossdermError(f"{path}: not found (run `crossderm prepare` to create {data_dir})")
    info = read_json(info_path, f"run `crossderm prepare` to create {data_dir}")
    for key in ("cache_file", "image_size"):
        if key not in info:
            raise CrossdermError(f"{info_path}: no {key!r} entry (run `crossderm prepare` again)")
    size = info["image_size"]
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise CrossdermError(
            f"{info_path}: 'image_size' {size!r} is not a side in pixels ({MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE})"
        )
    try:
        manifest = pd.read_csv(manifest_path, dtype=TEXT_COLUMNS, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CrossdermError(f"{manifest_path}: cannot read manifest ({' '.join(str(exc).split())})") from None
    check_manifest(manifest, manifest_path)
    return PreparedData(data_dir, manifest, info)


def check_manifest(manifest: pd.DataFrame, path: Path) -> None:
    """The manifest's invariants; the first violation is a one-line error naming its line."""
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise CrossdermError(f"{at(path, 1)}: missing column(s) {', '.join(missing)}")
    if manifest.empty:
        raise CrossdermError(f"{path}: no images")
    for column in ("fold", "cache_index"):
        values = pd.to_numeric(manifest[column], errors="coerce")
        bad = values.isna() | (values < 0) | (values != values.round())
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise CrossdermError(f"{at(path, row + 2)}: {column} {str(manifest[column].iat[row])!r} is not a count")
        manifest[column] = values.astype(np.int64)
    unknown = ~manifest["label"].isin(CLASSES)
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise CrossdermError(f"{at(path, row + 2)}: unknown label {manifest['label'].iat[row]!r}")
    for column in ("image_id", "cache_index"):
        key = ["source", column] if column == "image_id" else [column]
        repeated = manifest.duplicated(key)
        if repeated.any():
            row = int(np.flatnonzero(repeated.to_numpy())[0])
            raise CrossdermError(f"{at(path, row + 2)}: duplicate {column} {manifest[column].iat[row]!r}")
    check_grouped_folds(manifest, str(path))
    check_lesions_across_sources(manifest, str(path))
