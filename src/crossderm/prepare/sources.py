"""Readers for the official HAM10000 and ISIC 2019 downloads, harmonised to one table.

Both readers return one row per labelled image with the columns of ``TABLE_COLUMNS`` (``path`` empty when the
file is absent; ``age``, ``sex``, ``anatom_site`` harmonised by :mod:`crossderm.prepare.metadata`, blank when
missing). Sites: HAM10000's ``dataset`` column (in the newer Dataverse metadata, see ``--ham-metadata``) and
ISIC 2019's lesion-id prefix (``BCN_`` -> bcn, ``MSK...`` -> msk; no lesion id -> ``archive``, the older ISIC
archive images); a ``--sites`` file overrides both.
They accept the files as distributed: CRLF line endings, float one-hots (``1.0``), ``_downsampled`` ids,
blank ages and blank lesion ids. Anything malformed is a :class:`CrossdermError` naming the file and line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from crossderm.csvtable import read_table
from crossderm.errors import CrossdermError, at
from crossderm.labels import CLASSES, ISIC2019_COLUMNS
from crossderm.prepare.metadata import (
    HAM_LOCALIZATION,
    ISIC_ANATOM_SITE,
    harmonise_age,
    harmonise_anatom_site,
    harmonise_sex,
)

# The official downloads' file names. ``synth`` writes, and ``download`` unpacks into, folders named
# HAM_FOLDER and ISIC_FOLDER holding exactly these.
HAM_FOLDER = "HAM10000"
ISIC_FOLDER = "ISIC2019"
HAM_METADATA_NAMES = ("HAM10000_metadata.csv", "HAM10000_metadata")
HAM_IMAGE_FOLDERS = ("HAM10000_images_part_1", "HAM10000_images_part_2")  # the reader also takes any subfolder
ISIC_GROUND_TRUTH = "ISIC_2019_Training_GroundTruth.csv"
ISIC_METADATA = "ISIC_2019_Training_Metadata.csv"
ISIC_IMAGE_FOLDER = "ISIC_2019_Training_Input"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# HAM10000 is exactly ISIC_0024306..ISIC_0034320 in the ISIC archive (10,015 consecutive ids).
HAM_ID_RANGE = (24306, 34320)
TABLE_COLUMNS = [
    "image_id", "source", "site", "label", "original_label", "lesion_id", "age", "sex", "anatom_site", "path",
]
UNKNOWN_SITE = "unknown"
ISIC_ARCHIVE_SITE = "archive"


@dataclass
class SourceReport:
    """What a reader saw and did, for the audit."""

    metadata_files: list[str] = field(default_factory=list)
    rows: int = 0
    removed: dict[str, int] = field(default_factory=dict)
    dropped_labels: dict[str, int] = field(default_factory=dict)
    sites_from_file: int = 0


def read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    """Every cell as a string, stripped (ids like ``ISIC_0000000`` and blank cells stay as they are); blank rows are
    skipped and each row is indexed by its line in the file (:func:`crossderm.csvtable.read_table`)."""
    frame, header_line = read_table(path)
    if frame.empty:
        raise CrossdermError(f"{path}: no data rows (only a header)")
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise CrossdermError(
            f"{at(path, header_line)}: missing column(s) {', '.join(missing)} (have: {', '.join(frame.columns)})"
        )
    return frame


def _line(index: int) -> int:
    """File line of a data row: :func:`read_csv` indexes each row by its line."""
    return int(index)


def check_unique_ids(frame: pd.DataFrame, column: str, path: Path) -> None:
    blank = frame.index[frame[column] == ""]
    if len(blank):
        raise CrossdermError(f"{at(path, _line(blank[0]))}: blank {column}")
    duplicated = frame.index[frame[column].duplicated(keep=False)]
    if len(duplicated):
        first = frame.loc[duplicated[0], column]
        rows = frame.index[frame[column] == first][:2]
        raise CrossdermError(
            f"{at(path, _line(rows[1]))}: duplicate {column} {first!r} (first at line {_line(rows[0])})"
        )


def index_images(root: Path) -> dict[str, Path]:
    """Map image id (file stem) -> path for every image below ``root``, in any subfolder."""
    found: dict[str, Path] = {}
    for folder, _dirs, files in os.walk(root):
        for name in files:
            stem, suffix = os.path.splitext(name)
            if suffix.lower() not in IMAGE_SUFFIXES:
                continue
            path = Path(folder) / name
            if stem in found:
                raise CrossdermError(f"{path}: image {stem!r} also found at {found[stem]}")
            found[stem] = path
    return found


def _attach_paths(frame: pd.DataFrame, images: dict[str, Path]) -> pd.DataFrame:
    frame["path"] = [str(images[i]) if i in images else "" for i in frame["image_id"]]
    return frame


def read_ham10000(ham: Path, metadata: Path | None = None) -> tuple[pd.DataFrame, SourceReport]:
    """HAM10000: ``HAM10000_metadata.csv`` (with or without ``dataset``) and images in any subfolder.

    ``metadata`` replaces the download's own metadata file, e.g. the newer Dataverse release with the
    ``dataset`` (acquisition site) column that the Kaggle copy lacks.
    """
    ham = Path(ham)
    if ham.is_file():
        found, root = ham, ham.parent
    else:
        candidates = [ham / n for n in HAM_METADATA_NAMES if (ham / n).is_file()]
        if not candidates and metadata is None:
            raise CrossdermError(f"{ham}: no {HAM_METADATA_NAMES[0]} here (pass the HAM10000 download folder)")
        found, root = (candidates or [None])[0], ham
    metadata = Path(metadata) if metadata is not None else found
    if not metadata.is_file():
        raise CrossdermError(f"{metadata}: no such HAM10000 metadata file")
    frame = read_csv(metadata, ("lesion_id", "image_id", "dx"))
    check_unique_ids(frame, "image_id", metadata)
    unknown = frame.index[~frame["dx"].isin(CLASSES)]
    if len(unknown):
        row = unknown[0]
        raise CrossdermError(
            f"{at(metadata, _line(row))}: unknown dx {frame.loc[row, 'dx']!r} (expected one of {', '.join(CLASSES)})"
        )
    site = frame["dataset"].replace("", UNKNOWN_SITE) if "dataset" in frame.columns else UNKNOWN_SITE
    blank = pd.Series("", index=frame.index)
    table = pd.DataFrame(
        {
            "image_id": frame["image_id"],
            "source": "ham",
            "site": site,
            "label": frame["dx"],
            "original_label": frame["dx"],
            "lesion_id": frame["lesion_id"],
            "age": harmonise_age(frame.get("age", blank), metadata),
            "sex": harmonise_sex(frame.get("sex", blank), metadata),
            "anatom_site": harmonise_anatom_site(frame.get("localization", blank), HAM_LOCALIZATION, metadata),
        }
    )
    table = _attach_paths(table, index_images(root))
    report = SourceReport(metadata_files=[str(metadata)], rows=len(frame))
    return table[TABLE_COLUMNS].reset_index(drop=True), report


def _isic_site(lesion_id: str) -> str:
    """Acquisition site from the ISIC 2019 lesion id prefix (BCN_, MSK*_, HAM_); blank -> the ISIC archive."""
    prefix = lesion_id.split("_", 1)[0].upper() if lesion_id else ""
    if prefix == "BCN":
        return "bcn"
    if prefix.startswith("MSK"):
        return "msk"
    if prefix == "HAM":
        return "ham"
    return ISIC_ARCHIVE_SITE if not lesion_id else UNKNOWN_SITE


def _base_number(image_id: str) -> int | None:
    stem = image_id.removesuffix("_downsampled")
    digits = stem.removeprefix("ISIC_")
    return int(digits) if digits.isdigit() else None


def read_isic2019(
    isic: Path, label_map: dict[str, str | None], ham_ids: set[str] | None = None
) -> tuple[pd.DataFrame, SourceReport]:
    """ISIC 2019 training set without the HAM10000 images it contains, labels mapped to the HAM classes.

    A row is a HAM10000 image if its id (``_downsampled`` stripped) is a HAM10000 id, its lesion id starts
    with ``HAM_``, or its number lies in HAM10000's id range; each criterion is counted for the audit.
    """
    isic = Path(isic)
    truth_path, meta_path = isic / ISIC_GROUND_TRUTH, isic / ISIC_METADATA
    for path in (truth_path, meta_path):
        if not path.is_file():
            raise CrossdermError(f"{path}: not found (pass the folder holding the ISIC 2019 training CSVs)")
    truth = read_csv(truth_path, ("image", *ISIC2019_COLUMNS))
    check_unique_ids(truth, "image", truth_path)
    onehot = _parse_onehot(truth, truth_path)
    meta = read_csv(meta_path, ("image", "lesion_id"))
    check_unique_ids(meta, "image", meta_path)
    lesion_of = dict(zip(meta["image"], meta["lesion_id"], strict=True))
    blank = pd.Series("", index=meta.index)
    patient = pd.DataFrame({
        "age": harmonise_age(meta.get("age_approx", blank), meta_path),
        "sex": harmonise_sex(meta.get("sex", meta.get("gender", blank)), meta_path),
        "anatom_site": harmonise_anatom_site(meta.get("anatom_site_general", blank), ISIC_ANATOM_SITE, meta_path),
    }).set_index(meta["image"])
    absent = truth.index[~truth["image"].isin(lesion_of.keys())]
    if len(absent):
        row = absent[0]
        raise CrossdermError(
            f"{at(truth_path, _line(row))}: image {truth.loc[row, 'image']!r} has no row in {meta_path.name} "
            f"({len(absent)} such images)"
        )
    original = np.asarray(ISIC2019_COLUMNS)[onehot.argmax(axis=1)]
    table = pd.DataFrame({"image_id": truth["image"], "original_label": original})
    table["lesion_id"] = table["image_id"].map(lesion_of)
    table["source"] = "isic"
    table["site"] = table["lesion_id"].map(_isic_site)
    table = table.join(patient, on="image_id")

    base_ids = table["image_id"].str.removesuffix("_downsampled")
    numbers = table["image_id"].map(_base_number)
    by_id = base_ids.isin(ham_ids) if ham_ids is not None else pd.Series(False, index=table.index)
    by_lesion = table["lesion_id"].str.upper().str.startswith("HAM_")
    by_range = numbers.between(*HAM_ID_RANGE).fillna(False).astype(bool)
    is_ham = by_id | by_lesion | by_range
    report = SourceReport(metadata_files=[str(truth_path), str(meta_path)], rows=len(table))
    report.removed = {
        "ham_images_removed": int(is_ham.sum()),
        "by_ham_image_id": int(by_id.sum()),
        "by_ham_lesion_prefix": int(by_lesion.sum()),
        "by_ham_id_range": int(by_range.sum()),
    }
    table = table[~is_ham].copy()

    table["label"] = table["original_label"].map(label_map)
    dropped = table["label"].isna()
    report.dropped_labels = {k: int(v) for k, v in table.loc[dropped, "original_label"].value_counts().items()}
    table = table[~dropped]
    image_root = isic / ISIC_IMAGE_FOLDER if (isic / ISIC_IMAGE_FOLDER).is_dir() else isic
    table = _attach_paths(table, index_images(image_root))
    return table[TABLE_COLUMNS].reset_index(drop=True), report


def _parse_onehot(truth: pd.DataFrame, path: Path) -> np.ndarray:
    """The nine label columns as 0/1 with exactly one 1 per row; anything else names its line."""
    raw = truth[list(ISIC2019_COLUMNS)]
    values = raw.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise CrossdermError(
            f"{at(path, _line(truth.index[row]))}: {ISIC2019_COLUMNS[col]}={raw.iat[row, col]!r} is not 0 or 1"
        )
    sums = values.sum(axis=1)
    wrong = np.flatnonzero(sums != 1)
    if len(wrong):
        row = wrong[0]
        labels = [c for c, v in zip(ISIC2019_COLUMNS, values[row], strict=True) if v == 1]
        what = f"{len(labels)} labels ({', '.join(labels)})" if labels else "no label"
        raise CrossdermError(
            f"{at(path, _line(truth.index[row]))}: image {truth['image'].iat[row]!r} has {what}; expected one"
        )
    return values
