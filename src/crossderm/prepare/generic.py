"""Your own dataset as a source: ``crossderm prepare --source NAME=DIR``.

The folder layout (documented in the README)::

    DIR/labels.csv        image, label [, lesion_id, site, age, sex, anatom_site]
    DIR/label_map.yaml    optional: {your label: akiec|bcc|bkl|df|mel|nv|vasc or null (= drop)}
    DIR/**/<image>.jpg    images in any subfolder (.jpg .jpeg .png), ``image`` with or without the suffix

Without a label map the labels must already be the seven classes. ``site`` defaults to the source name (one
clinic, one site); ``lesion_id`` blank = the image is its own lesion. Every problem is a one-line error naming
``labels.csv`` and its line, before anything is written. PH2, Derm7pt, PAD-UFES-20 or a clinic's own export
become a source by writing this one CSV.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from crossderm.errors import CrossdermError, at
from crossderm.labels import CLASSES, read_class_map
from crossderm.prepare.metadata import ISIC_ANATOM_SITE, harmonise_age, harmonise_anatom_site, harmonise_sex
from crossderm.prepare.sources import TABLE_COLUMNS, SourceReport, check_unique_ids, index_images, read_csv

LABELS_FILE = "labels.csv"
LABEL_MAP_FILE = "label_map.yaml"
SOURCE_NAME = re.compile(r"[a-z][a-z0-9_]*")
RESERVED_NAMES = ("ham", "isic")  # the official readers' sources


def parse_source_spec(spec: str) -> tuple[str, Path]:
    """``NAME=DIR`` -> (name, folder); the name becomes the ``source`` of every row."""
    name, sep, folder = spec.partition("=")
    if not sep or not SOURCE_NAME.fullmatch(name) or not folder:
        raise CrossdermError(f"--source {spec!r}: expected NAME=DIR with a lower-case NAME (letters, digits, _)")
    if name in RESERVED_NAMES:
        raise CrossdermError(f"--source {spec!r}: {name!r} is the official reader's source; use --{name} or "
                             "another name")
    return name, Path(folder)


def read_generic(name: str, folder: Path) -> tuple[pd.DataFrame, SourceReport]:
    """One row per labelled image of ``folder`` in the harmonised table's columns."""
    labels_path = folder / LABELS_FILE
    if not labels_path.is_file():
        raise CrossdermError(f"{labels_path}: not found (a --source folder needs {LABELS_FILE}: image, label, ...)")
    frame = read_csv(labels_path, ("image", "label"))
    check_unique_ids(frame, "image", labels_path)
    map_path = folder / LABEL_MAP_FILE
    mapping = read_class_map(map_path) if map_path.is_file() else {c: c for c in CLASSES}
    unknown = ~frame["label"].isin(mapping.keys())
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        allowed = f"a label of {map_path}" if map_path.is_file() else f"one of {', '.join(CLASSES)} (or add {map_path})"
        raise CrossdermError(f"{at(labels_path, int(frame.index[row]))}: label {frame['label'].iat[row]!r} is not "
                             f"{allowed}")
    blank = pd.Series("", index=frame.index)
    image_ids = frame["image"].map(lambda entry: Path(entry).stem if Path(entry).suffix else entry)
    table = pd.DataFrame({
        "image_id": image_ids,
        "source": name,
        "site": frame.get("site", blank).replace("", name),
        "label": frame["label"].map(mapping),
        "original_label": frame["label"],
        "lesion_id": frame.get("lesion_id", blank),
        "age": harmonise_age(frame.get("age", blank), labels_path),
        "sex": harmonise_sex(frame.get("sex", blank), labels_path),
        "anatom_site": harmonise_anatom_site(frame.get("anatom_site", blank), ISIC_ANATOM_SITE, labels_path),
    })
    repeated = table["image_id"].duplicated()
    if repeated.any():
        row = int(np.flatnonzero(repeated.to_numpy())[0])
        raise CrossdermError(
            f"{at(labels_path, int(table.index[row]))}: image {table['image_id'].iat[row]!r} is listed twice"
        )
    dropped = table["label"].isna()
    report = SourceReport(metadata_files=[str(labels_path)], rows=len(table))
    report.dropped_labels = {str(k): int(v) for k, v in table.loc[dropped, "original_label"].value_counts().items()}
    table = table[~dropped].copy()
    images = index_images(folder)
    table["path"] = [str(images[i]) if i in images else "" for i in table["image_id"]]
    return table[TABLE_COLUMNS].reset_index(drop=True), report
