"""Lesion-grouped stratified folds on the real metadata."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from crossderm.errors import CrossdermError
from crossderm.prepare.pipeline import PrepareConfig, harmonised_table
from crossderm.split.folds import check_grouped_folds


@pytest.fixture(scope="module")
def real_table(shared_data: Path) -> pd.DataFrame:
    table, _, _ = harmonised_table(
        PrepareConfig(out=Path("unused"), ham=shared_data / "HAM10000", isic=shared_data / "ISIC2019")
    )
    return table


def test_every_lesion_in_one_fold(real_table: pd.DataFrame) -> None:
    assert real_table.groupby("lesion_group")["fold"].nunique().max() == 1
    ham = real_table[real_table["source"] == "ham"]
    assert ham["lesion_group"].nunique() == 7470
    isic = real_table[real_table["source"] == "isic"]
    blank = isic["lesion_id"] == ""
    assert isic.loc[blank, "lesion_group"].nunique() == blank.sum()  # no lesion id -> its own group


def test_folds_are_stratified_and_balanced(real_table: pd.DataFrame) -> None:
    for _, part in real_table.groupby("source"):
        sizes = part["fold"].value_counts()
        assert sorted(sizes.index) == [0, 1, 2, 3, 4]
        assert sizes.max() / sizes.min() < 1.1
        share = pd.crosstab(part["label"], part["fold"], normalize="columns")
        overall = part["label"].value_counts(normalize=True)
        assert (share.sub(overall, axis=0).abs() < 0.02).all().all()


def test_folds_are_reproducible(shared_data: Path, real_table: pd.DataFrame) -> None:
    again, _, _ = harmonised_table(PrepareConfig(out=Path("unused"), ham=shared_data / "HAM10000", folds=5, seed=0))
    assert again["fold"].tolist() == real_table.loc[real_table["source"] == "ham", "fold"].tolist()
    other, _, _ = harmonised_table(PrepareConfig(out=Path("unused"), ham=shared_data / "HAM10000", seed=1))
    assert other["fold"].tolist() != again["fold"].tolist()


def test_leakage_is_detected() -> None:
    table = pd.DataFrame({"lesion_group": ["a", "a", "b"], "fold": [0, 1, 1], "image_id": ["1", "2", "3"]})
    with pytest.raises(CrossdermError, match="lesion leakage: 1 lesion groups span several folds"):
        check_grouped_folds(table)
