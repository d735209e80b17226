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


SHIPPED = Path(__file__).resolve().parents[2] / "splits" / "ham10000_isic2019_5fold_seed0.csv"


def test_shipped_split_file_is_what_prepare_computes(real_table: pd.DataFrame) -> None:
    shipped = pd.read_csv(SHIPPED, dtype={"image_id": str})
    assert len(shipped) == 10015 + 15316
    merged = real_table.merge(shipped, on=["source", "image_id"], suffixes=("", "_shipped"))
    assert len(merged) == len(real_table)
    assert (merged["fold"] == merged["fold_shipped"]).all()
    assert (merged["lesion_group"] == merged["lesion_group_shipped"]).all()


def test_split_file_reproduces_folds_under_another_seed(shared_data: Path) -> None:
    config = PrepareConfig(out=Path("unused"), ham=shared_data / "HAM10000", seed=123, splits=SHIPPED)
    table, _, _ = harmonised_table(config)
    shipped = pd.read_csv(SHIPPED, dtype={"image_id": str}).set_index(["source", "image_id"])["fold"]
    assert table.set_index(["source", "image_id"])["fold"].equals(
        shipped.loc[table.set_index(["source", "image_id"]).index]
    )


def test_split_file_must_cover_every_image_with_its_lesion(synth_raw: Path, tmp_path: Path) -> None:
    table, _, _ = harmonised_table(PrepareConfig(out=tmp_path, ham=synth_raw / "HAM10000"))
    partial = tmp_path / "partial.csv"
    table.iloc[3:].to_csv(partial, index=False)
    with pytest.raises(CrossdermError, match=r"partial.csv: 3 labelled images are not in the split file"):
        harmonised_table(PrepareConfig(out=tmp_path, ham=synth_raw / "HAM10000", splits=partial))
    # synthetic HAM ids reuse the real id range, but their lesions differ from the real ones
    with pytest.raises(CrossdermError, match=r"has another lesion group in the split file"):
        harmonised_table(PrepareConfig(out=tmp_path, ham=synth_raw / "HAM10000", splits=SHIPPED))
