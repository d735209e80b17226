"""Predicting many image files into one table, each bad image an error row while the rest complete.

The ``--format isic2019`` rule: each of our seven classes goes to its ISIC 2019 column by
``ham_to_isic_columns(DEFAULT_ISIC_TO_HAM)`` (akiec -> AK, bcc -> BCC, bkl -> BKL, df -> DF, mel -> MEL, nv -> NV,
vasc -> VASC); SCC and UNK, which the 7-class models cannot tell apart (SCC is folded into akiec in training) or
do not know, are 0.0. Failed images are left out of that table, which has no error column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
from tqdm import tqdm

from crossderm.imaging import ImageError, decode
from crossderm.labels import CLASSES, DEFAULT_ISIC_TO_HAM, ISIC2019_COLUMNS, ham_to_isic_columns


class Predictor(Protocol):
    """The torch :class:`~crossderm.predict.ensemble.Ensemble` and the ONNX ``OnnxEnsemble`` alike."""

    image_size: int

    def predict(self, pixels: np.ndarray, views: int = 4) -> np.ndarray: ...


def predict_paths(
    predictor: Predictor, paths: list[Path], views: int, batch_size: int, max_pixels: int
) -> tuple[np.ndarray, list[str]]:
    """Probabilities (N, 7), NaN rows for failed images, and each image's error ('' when ok)."""
    probs = np.full((len(paths), len(CLASSES)), np.nan)
    errors = [""] * len(paths)
    with tqdm(total=len(paths), desc="predict", unit="img", disable=None) as progress:
        for start in range(0, len(paths), batch_size):
            rows, pixels = [], []
            for row in range(start, min(start + batch_size, len(paths))):
                try:
                    pixels.append(decode(paths[row], predictor.image_size, max_pixels).pixels)
                    rows.append(row)
                except ImageError as exc:
                    errors[row] = str(exc)
            if rows:
                probs[rows] = predictor.predict(np.stack(pixels), views)
            progress.update(min(batch_size, len(paths) - start))
    return probs, errors


def prediction_table(paths: list[Path], probs: np.ndarray, errors: list[str]) -> pd.DataFrame:
    """The crossderm output: one row per input in input order; failed rows have empty probabilities."""
    ok = np.array([not error for error in errors], dtype=bool)
    table = pd.DataFrame({"image_id": [p.stem for p in paths], "path": [str(p) for p in paths]})
    table[list(CLASSES)] = probs
    best = np.nan_to_num(probs, nan=-1.0).argmax(axis=1)
    table["predicted"] = [CLASSES[k] if good else "" for k, good in zip(best, ok, strict=True)]
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
