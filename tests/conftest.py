"""Shared fixtures: the real public data beside the repo (skipped cleanly when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "HAM10000" / "HAM10000_metadata.csv").is_file():
        pytest.skip(f"real data not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synth_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic download in the official layouts (both sources)."""
    from crossderm.synth.generator import generate

    out = tmp_path_factory.mktemp("synth") / "raw"
    generate(out, ham_lesions=120, isic_lesions=120, seed=0, image_scale=0.5)
    return out


@pytest.fixture(scope="session")
def synth_prepared(synth_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small synthetic download prepared at 32 px, 5 lesion-grouped folds."""
    from crossderm.prepare.pipeline import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare(PrepareConfig(out=out, ham=synth_raw / "HAM10000", isic=synth_raw / "ISIC2019", image_size=32, workers=1))
    return out


TINY_TRAINING = [
    "model=test_efficientnet",
    "epochs=1",
    "batch_size=32",
    "eval_batch_size=128",
    "lr=3e-3",
    "channels_last=false",
]


@pytest.fixture(scope="session")
def synth_run(synth_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 5-fold run (tiny model, one epoch) of the joint experiment: a RUN_DIR to infer with."""
    from crossderm.train.config import load_config
    from crossderm.train.cv import run_cv

    out = tmp_path_factory.mktemp("runs") / "joint"
    run_cv(load_config("demo_b_joint", TINY_TRAINING), synth_prepared, out, n_bootstrap=200)
    return out
