"""Lesion-grouped, stratified K-fold assignment per source.

Images of one lesion are near-identical views; if they straddle folds the test fold leaks. Every image
carries a ``lesion_group`` (its lesion id, or its own image id when it has none) and scikit-learn's
``StratifiedGroupKFold`` keeps each group inside one fold while balancing the class mix.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from crossderm.datafolder import check_grouped_folds
from crossderm.errors import CrossdermError, at


def lesion_groups(table: pd.DataFrame) -> pd.Series:
    """``source:lesion_id``, or ``source:image_id`` for an image without a lesion id."""
    key = table["lesion_id"].where(table["lesion_id"].fillna("") != "", table["image_id"])
    return table["source"] + ":" + key


def assign_folds(table: pd.DataFrame, n_folds: int, seed: int) -> pd.Series:
    """Fold index per row, assigned independently within each source."""
    if n_folds < 2:
        raise CrossdermError(f"--folds must be at least 2, got {n_folds}")
    folds = pd.Series(-1, index=table.index, dtype=int)
    for source, part in table.groupby("source", sort=True):
        n_groups = part["lesion_group"].nunique()
        if n_groups < n_folds:
            raise CrossdermError(f"source {source!r} has {n_groups} lesion groups, fewer than {n_folds} folds")
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
                splits = list(splitter.split(np.zeros(len(part)), part["label"], part["lesion_group"]))
        except ValueError as exc:
            raise CrossdermError(f"source {source!r}: cannot make {n_folds} lesion-grouped folds "
                                 f"({' '.join(str(exc).split())}); use fewer --folds") from None
        for fold, (_, test) in enumerate(splits):
            folds.loc[part.index[test]] = fold
    check_grouped_folds(table.assign(fold=folds))
    return folds


SPLIT_COLUMNS = ["source", "image_id", "lesion_group", "label", "fold"]


def folds_from_file(table: pd.DataFrame, path: Path) -> pd.Series:
    """Folds from a split file (``splits.csv`` of an earlier prepare, or one shipped in ``splits/``).

    Reusing the exact file makes folds independent of the scikit-learn version and of the seed. Every
    labelled image must be listed, with the same lesion group; the grouping check runs again.
    """
    from crossderm.csvtable import read_table

    splits, header_line = read_table(path, "split file")
    missing_columns = [c for c in ("source", "image_id", "fold") if c not in splits.columns]
    if missing_columns:
        raise CrossdermError(f"{at(path, header_line)}: missing column(s) {', '.join(missing_columns)}")
    bad_fold = ~splits["fold"].str.fullmatch(r"\d{1,3}")
    if bad_fold.any():
        line = int(splits.index[bad_fold][0])
        raise CrossdermError(f"{at(path, line)}: fold {splits.at[line, 'fold']!r} is not a fold number")
    repeated = splits.duplicated(["source", "image_id"], keep="first")
    if repeated.any():
        line = int(splits.index[repeated][0])
        raise CrossdermError(f"{at(path, line)}: image {splits.at[line, 'image_id']} of {splits.at[line, 'source']} "
                             "is listed twice")
    splits = splits.assign(fold=splits["fold"].astype(int)).reset_index(drop=True)
    merged = table[["source", "image_id", "lesion_group"]].merge(
        splits, on=["source", "image_id"], how="left", suffixes=("", "_file"), validate="one_to_one"
    )
    absent = merged["fold"].isna()
    if absent.any():
        examples = ", ".join(merged.loc[absent, "image_id"].head(3))
        raise CrossdermError(f"{path}: {int(absent.sum())} labelled images are not in the split file (e.g. {examples})")
    if "lesion_group_file" in merged and (merged["lesion_group_file"] != merged["lesion_group"]).any():
        row = merged.index[merged["lesion_group_file"] != merged["lesion_group"]][0]
        raise CrossdermError(f"{path}: image {merged.at[row, 'image_id']} has another lesion group in the split file")
    folds = pd.Series(merged["fold"].astype(int).to_numpy(), index=table.index)
    check_grouped_folds(table.assign(fold=folds))
    return folds


def fold_table(table: pd.DataFrame) -> pd.DataFrame:
    """Images per (source, label) x fold, the table a reader checks stratification with."""
    return table.pivot_table(
        index=["source", "label"], columns="fold", values="image_id", aggfunc="count", fill_value=0
    )


def inner_validation(table: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a lesion-grouped validation subset of a training set, stratified by source x label.

    Model selection (best epoch, early stopping) looks only at this subset, never at the test fold.
    """
    if not 0 < fraction < 0.5:
        raise CrossdermError(f"val_fraction must be in (0, 0.5), got {fraction}")
    n_splits = max(2, round(1 / fraction))
    strata = table["source"].astype(str) + "/" + table["label"].astype(str)
    if table["lesion_group"].nunique() < n_splits:
        raise CrossdermError(f"too few lesion groups ({table['lesion_group'].nunique()}) for an inner validation split")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # rare classes have fewer groups than splits; they simply land in validation or not, as sklearn warns
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        _, val = next(splitter.split(np.zeros(len(table)), strata, table["lesion_group"]))
    mask = np.zeros(len(table), dtype=bool)
    mask[val] = True
    return mask
