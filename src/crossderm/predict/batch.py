"""Predicting many image files into one table, each bad image an error row while the rest complete.

The ``--format isic2019`` rule: each of our seven classes goes to its ISIC 2019 column by
``ham_to_isic_columns(DEFAULT_ISIC_TO_HAM)`` (akiec -> AK, bcc -> BCC, bkl -> BKL, df -> DF, mel -> MEL, nv -> NV,
vasc -> VASC); SCC and UNK, which the 7-class models cannot tell apart (SCC is folded into akiec in training) or
do not know, are 0.0. Failed images are left out of that table, which has no error column.

A metadata model (crossderm.models.metadata_fusion) needs each image's age, sex and anatomical site; an image
without them is an error row unless imputation (every field missing) is asked for. The torch backend adds the
out-of-distribution scores of each image (crossderm.models.ood).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
from tqdm import tqdm

from crossderm.defaults import OOD_COLUMNS
from crossderm.imaging import ImageError, decode
from crossderm.labels import CLASSES, DEFAULT_ISIC_TO_HAM, ISIC2019_COLUMNS, ham_to_isic_columns
from crossderm.patient import MetadataError, encode_metadata, missing_metadata


class Predictor(Protocol):
    """The torch :class:`~crossderm.predict.ensemble.Ensemble` and the ONNX ``OnnxEnsemble`` alike."""

    image_size: int

    def predict(self, pixels: np.ndarray, views: int = 4) -> np.ndarray: ...


@dataclass(frozen=True)
class BatchPrediction:
    probs: np.ndarray  # (N, 7), NaN rows for failed images
    errors: list[str]  # '' when ok
    ood: dict[str, np.ndarray] | None  # crossderm.models.ood scores (torch backend), NaN for failed images


MetadataRow = np.ndarray | str  # one image's encoded metadata, or why it has none


def metadata_rows(keys: Sequence[Hashable], values: Mapping[Hashable, tuple[str, str, str]],
                  impute: bool) -> list[MetadataRow]:
    """Each image's encoded metadata (crossderm.patient) from ``values`` (age, sex, anatom_site per image key);
    without an entry: every field missing when ``impute``, else the reason it cannot be predicted."""
    rows: list[MetadataRow] = []
    for key in keys:
        if key in values:
            try:
                rows.append(encode_metadata(*([v] for v in values[key]))[0])
            except MetadataError as exc:
                rows.append(f"bad metadata ({exc})")
        elif impute:
            rows.append(missing_metadata(1)[0])
        else:
            rows.append("no metadata for this image (give age, sex, anatom_site columns in a CSV list, "
                        "or --impute-metadata)")
    return rows


def predict_paths(
    predictor: Predictor, paths: list[Path], views: int, batch_size: int, max_pixels: int,
    metadata: list[MetadataRow] | None = None,
) -> BatchPrediction:
    """Decode and predict ``paths`` in batches; a bad image (or missing metadata) is an error row."""
    probs = np.full((len(paths), len(CLASSES)), np.nan)
    errors = [""] * len(paths)
    with_ood = hasattr(predictor, "predict_with_ood")
    ood = {name: np.full(len(paths), np.nan) for name in OOD_COLUMNS} if with_ood else None
    with tqdm(total=len(paths), desc="predict", unit="img", disable=None) as progress:
        for start in range(0, len(paths), batch_size):
            rows, pixels, meta = [], [], []
            for row in range(start, min(start + batch_size, len(paths))):
                if metadata is not None and isinstance(metadata[row], str):
                    errors[row] = metadata[row]
                    continue
                try:
                    pixels.append(decode(paths[row], predictor.image_size, max_pixels).pixels)
                    rows.append(row)
                    if metadata is not None:
                        meta.append(metadata[row])
                except ImageError as exc:
                    errors[row] = str(exc)
            if rows:
                batch_meta = np.stack(meta) if metadata is not None else None
                if with_ood:
                    probs[rows], scores = predictor.predict_with_ood(np.stack(pixels), views, batch_meta)
                    for name, values in scores.items():
                        ood[name][rows] = values
                else:
                    probs[rows] = predictor.predict(np.stack(pixels), views)
            progress.update(min(batch_size, len(paths) - start))
    return BatchPrediction(probs, errors, ood)


def prediction_table(paths: list[Path], result: BatchPrediction) -> pd.DataFrame:
    """The crossderm output: one row per input in input order; failed rows have empty probabilities."""
    probs, errors = result.probs, result.errors
    ok = np.array([not error for error in errors], dtype=bool)
    table = pd.DataFrame({"image_id": [p.stem for p in paths], "path": [str(p) for p in paths]})
    table[list(CLASSES)] = probs
    best = np.nan_to_num(probs, nan=-1.0).argmax(axis=1)
    table["predicted"] = [CLASSES[k] if good else "" for k, good in zip(best, ok, strict=True)]
    for name, values in (result.ood or {}).items():
        table[name] = values
    table["status"] = np.where(ok, "ok", "error")
    table["error"] = errors
    return table


def isic2019_table(table: pd.DataFrame) -> pd.DataFrame:
    """ISIC 2019 submission columns for the ok rows; the mapping rule is in the module docstring."""
    source_class = {column: cls for cls, column in ham_to_isic_columns(DEFAULT_ISIC_TO_HAM).items()}
    ok = table[table["status"] == "ok"]
    out = pd.DataFrame({"image": ok["image_id"].to_numpy()})
    for column in ISIC2019_COLUMNS:
        out[column] = ok[source_class[column]].to_numpy() if column in source_class else 0.0
    return out
