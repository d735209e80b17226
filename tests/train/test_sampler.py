"""Sampler weights give the promised draw proportions on the real manifest; distributed shards are exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from crossderm.errors import CrossdermError
from crossderm.labels import CLASSES
from crossderm.prepare.pipeline import PrepareConfig, harmonised_table
from crossderm.train.sampler import EpochSampler, sampling_weights


@pytest.fixture(scope="module")
def real_train(shared_data: Path) -> pd.DataFrame:
    """Training folds (all but fold 0) of the real HAM10000 + ISIC 2019 metadata: 20,265 images."""
    table, _, _ = harmonised_table(
        PrepareConfig(out=Path("unused"), ham=shared_data / "HAM10000", isic=shared_data / "ISIC2019",
                      ham_metadata=shared_data / "extra" / "HAM10000_metadata_with_dataset.csv")
    )
    return table[table["fold"] != 0].reset_index(drop=True)


def _draw(frame: pd.DataFrame, kind: str, n: int = 200_000) -> pd.DataFrame:
    sites = (frame["source"] + "/" + frame["site"]).to_numpy()
    weights = sampling_weights(kind, frame["label"].to_numpy(), frame["source"].to_numpy(), sites)
    indices = EpochSampler(weights, n, seed=0).indices(0).numpy()
    return frame.iloc[indices]


def test_real_manifest_is_imbalanced(real_train: pd.DataFrame) -> None:
    share = real_train["source"].value_counts(normalize=True)
    assert share["isic"] == pytest.approx(15316 / 25331, abs=0.01)


def test_source_balanced_gives_each_source_half(real_train: pd.DataFrame) -> None:
    drawn = _draw(real_train, "source_balanced")
    assert drawn["source"].value_counts(normalize=True).to_dict() == pytest.approx({"ham": 0.5, "isic": 0.5}, abs=0.005)
    # within a source the natural class mix is kept
    ham_drawn = drawn[drawn["source"] == "ham"]["label"].value_counts(normalize=True)
    ham_true = real_train[real_train["source"] == "ham"]["label"].value_counts(normalize=True)
    assert (ham_drawn - ham_true).abs().max() < 0.01


def test_class_balanced_gives_each_class_a_seventh(real_train: pd.DataFrame) -> None:
    share = _draw(real_train, "class_balanced")["label"].value_counts(normalize=True)
    assert sorted(share.index) == list(CLASSES)
    assert np.allclose(share.to_numpy(), 1 / 7, atol=0.005)


def test_class_sqrt_gives_each_class_a_share_proportional_to_the_root_of_its_count(real_train: pd.DataFrame) -> None:
    counts = real_train["label"].value_counts().reindex(CLASSES)
    expected = np.sqrt(counts) / np.sqrt(counts).sum()
    share = _draw(real_train, "class_sqrt")["label"].value_counts(normalize=True).reindex(CLASSES)
    assert np.allclose(share.to_numpy(), expected.to_numpy(), atol=0.004)
    # nv (half the images) falls to under a third of the draws; df, the rarest, gets several times its share
    assert counts["nv"] / counts.sum() > 0.45 and 0.25 < share["nv"] < 0.33
    assert share["df"] > 3 * counts["df"] / counts.sum()


def test_source_class_balanced_equalises_cells(real_train: pd.DataFrame) -> None:
    drawn = _draw(real_train, "source_class_balanced")
    share = drawn.groupby(["source", "label"]).size() / len(drawn)
    assert len(share) == 14
    assert np.allclose(share.to_numpy(), 1 / 14, atol=0.004)


def test_site_balanced_gives_each_of_the_seven_real_sites_a_seventh(real_train: pd.DataFrame) -> None:
    drawn = _draw(real_train, "site_balanced")
    share = (drawn["source"] + "/" + drawn["site"]).value_counts(normalize=True)
    assert sorted(share.index) == ["ham/rosendahl", "ham/vidir_modern", "ham/vidir_molemax", "ham/vienna_dias",
                                   "isic/archive", "isic/bcn", "isic/msk"]
    assert np.allclose(share.to_numpy(), 1 / 7, atol=0.005)
    # vienna_dias is 1.7 % of the pool and gets a seventh; within a site the class mix is kept
    msk = drawn[drawn["site"] == "msk"]["label"].value_counts(normalize=True)
    truth = real_train[real_train["site"] == "msk"]["label"].value_counts(normalize=True)
    assert (msk - truth).abs().max() < 0.02


def test_site_class_balanced_equalises_the_cells_present(real_train: pd.DataFrame) -> None:
    drawn = _draw(real_train, "site_class_balanced")
    cells = drawn.groupby(["source", "site", "label"]).size() / len(drawn)
    present = real_train.groupby(["source", "site", "label"]).size()
    assert len(cells) == len(present) and np.allclose(cells.to_numpy(), 1 / len(present), atol=0.004)


def test_site_samplers_need_sites() -> None:
    with pytest.raises(CrossdermError, match="needs each image's site"):
        sampling_weights("site_balanced", np.array(["nv"]), np.array(["ham"]))


def test_uniform_is_a_permutation() -> None:
    indices = EpochSampler(None, 1000, seed=3).indices(5)
    assert sorted(indices.tolist()) == list(range(1000))
    assert not torch.equal(indices, EpochSampler(None, 1000, seed=3).indices(6))


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_distributed_shards_are_the_single_process_sample(real_train: pd.DataFrame, world_size: int) -> None:
    weights = sampling_weights("source_balanced", real_train["label"].to_numpy(), real_train["source"].to_numpy())
    n = 10_001
    single = EpochSampler(weights, n, seed=7).indices(3)
    shards = [EpochSampler(weights, n, seed=7, rank=r, world_size=world_size).indices(3) for r in range(world_size)]
    assert len({len(s) for s in shards}) == 1  # every rank takes the same number of steps
    union = torch.stack(shards, dim=1).reshape(-1)  # rank-interleaved = the global order
    padding = len(union) - n
    assert 0 <= padding < world_size
    assert torch.equal(union[:n], single)
    assert torch.equal(union[n:], single[:padding])


def test_unknown_sampler() -> None:
    with pytest.raises(CrossdermError, match="unknown sampler 'balanced'"):
        sampling_weights("balanced", np.array(["nv"]), np.array(["ham"]))
