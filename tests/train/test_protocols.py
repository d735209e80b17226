"""Leave-one-site-out, the site matrix and external sources, end to end on the small synthetic set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crossderm.cli import main
from crossderm.datafolder import load_dataset
from crossderm.labels import CLASSES
from crossderm.runfolder import RunFolder
from crossderm.train.config import load_config
from crossderm.train.fold import fold_data
from crossderm.train.protocols import job_images, jobs, site_keys

FAST = ["model=test_efficientnet", "epochs=1", "batch_size=32", "eval_batch_size=128", "lr=3e-3",
        "channels_last=false"]


def test_loso_jobs_hold_out_each_large_site_and_train_on_the_rest(synth_prepared: Path) -> None:
    manifest = load_dataset(synth_prepared).manifest
    config = load_config("demo_b_joint", [*FAST, "protocol=loso", "min_site_images=20"])
    keys = site_keys(manifest)
    counts = keys.value_counts()
    expected = sorted(counts[counts >= 20].index)
    assert [job.site for job in jobs(manifest, config)] == expected
    assert len(expected) >= 4 and (counts < 20).any()  # some small site is never held out
    for job in jobs(manifest, config):
        data = fold_data(manifest, config, job.fold)
        trained = set(site_keys(data.train)) | set(site_keys(data.val))
        assert set(site_keys(data.test)) == {job.site}
        assert len(data.test) == counts[job.site]  # every image of the held-out site
        assert job.site not in trained
        assert trained == set(counts.index) - {job.site}  # small sites are always trained on


def test_site_matrix_jobs_train_on_one_site(synth_prepared: Path) -> None:
    manifest = load_dataset(synth_prepared).manifest
    config = load_config("demo_b_joint", [*FAST, "protocol=site-matrix", "min_site_images=40"])
    counts = site_keys(manifest).value_counts()
    eligible = set(counts[counts >= 40].index)
    for job in jobs(manifest, config):
        data = fold_data(manifest, config, job.fold)
        assert set(site_keys(data.train)) | set(site_keys(data.val)) == {job.site}
        assert set(site_keys(data.test)) == eligible - {job.site}


def test_protocol_needs_two_sites(synth_prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["cv", "--config", "demo_b_joint", "--data", str(synth_prepared), "--out", str(tmp_path / "r"),
            "--set", "protocol=loso", "--set", "min_site_images=100000"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "protocol loso needs at least 2 sites with >= 100000 images" in err
    assert not (tmp_path / "r").exists()


def test_loso_run_pools_every_held_out_image_once_with_site_metrics(synth_prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "loso"
    config = load_config("demo_b_joint", [*FAST, "protocol=loso", "min_site_images=20"])
    assert main(["cv", "--config", "demo_b_joint", "--data", str(synth_prepared), "--out", str(out),
                 "--bootstrap", "100", *[f"--set={o}" for o in [*FAST, "protocol=loso", "min_site_images=20"]]]) == 0
    manifest = load_dataset(synth_prepared).manifest
    held = [job.site for job in jobs(manifest, config)]
    oof = pd.read_csv(out / "oof_predictions.csv", dtype={"image_id": str}, keep_default_na=False)
    assert sorted(set(site_keys(oof))) == held
    assert len(oof) == site_keys(manifest).isin(held).sum() and not oof.duplicated(["source", "image_id"]).any()
    run = json.loads((out / "run.json").read_text())
    assert run["protocol"] == "loso" and [run["jobs"][str(k)] for k in run["folds"]] == [
        f"{site} held out" for site in held]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(held) <= set(metrics["sites"])
    summary = metrics["site_summary"]
    values = [metrics["sites"][s]["macro_f1"]["value"] for s in summary["sites"]]
    assert summary["mean_macro_f1"]["value"] == pytest.approx(np.mean(values))
    assert summary["worst_site"]["macro_f1"]["value"] == pytest.approx(min(values))
    # folds as separate jobs + pool give the same files
    again = tmp_path / "again"
    for fold in run["folds"]:
        assert main(["cv", "--config", "demo_b_joint", "--data", str(synth_prepared), "--out", str(again),
                     "--fold", str(fold), *[f"--set={o}" for o in [*FAST, "protocol=loso", "min_site_images=20"]]]) == 0
    assert main(["pool", str(again), "--bootstrap", "100"]) == 0
    assert (again / "oof_predictions.csv").read_bytes() == (out / "oof_predictions.csv").read_bytes()


def test_site_matrix_run_keeps_every_cell_and_one_mean_per_image(synth_prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "matrix"
    overrides = [*FAST, "protocol=site-matrix", "min_site_images=40"]
    assert main(["cv", "--config", "demo_b_joint", "--data", str(synth_prepared), "--out", str(out),
                 "--bootstrap", "50", *[f"--set={o}" for o in overrides]]) == 0
    run = RunFolder(out)
    cells = pd.read_csv(run.site_matrix_predictions, dtype={"image_id": str}, keep_default_na=False)
    oof = pd.read_csv(run.oof_predictions, dtype={"image_id": str}, keep_default_na=False)
    k = len(json.loads(run.run_info.read_text())["folds"])
    assert len(cells) == (k - 1) * len(oof)  # each image predicted by every model not trained on its site
    assert (oof["fold"] == -1).all() and not oof.duplicated(["source", "image_id"]).any()
    mean = cells.groupby(["source", "image_id"])[list(CLASSES)].mean()
    got = oof.set_index(["source", "image_id"])[list(CLASSES)].loc[mean.index]
    np.testing.assert_allclose(got.to_numpy(), mean.to_numpy(), atol=1e-12)
    assert (cells["train_site"] != site_keys(cells)).all()
    matrix = json.loads(run.metrics.read_text())["site_matrix"]
    for train_site, row in matrix.items():
        for test_site, cell in row.items():
            n = ((cells["train_site"] == train_site) & (site_keys(cells) == test_site)).sum()
            assert cell["n"] == n and train_site != test_site
    assert "site" in (run.path / "metrics.md").read_text().lower()


def test_loso_never_trains_on_a_lesion_of_the_held_out_site_on_the_real_metadata(shared_data: Path) -> None:
    """9 HAM10000 lesions (26 images) were photographed at both vidir_modern and vidir_molemax (the Dataverse
    metadata): while either site is held out they are left out of training, and nothing else is."""
    meta = pd.read_csv(shared_data / "extra" / "HAM10000_metadata_with_dataset.csv")
    manifest = pd.DataFrame({"source": "ham", "site": meta["dataset"], "lesion_group": "ham:" + meta["lesion_id"],
                             "image_id": meta["image_id"], "fold": 0})
    spread = manifest.groupby("lesion_group")["site"].nunique()
    spanning = manifest["lesion_group"].isin(spread[spread > 1].index)
    assert (spread > 1).sum() == 9 and spanning.sum() == 26
    config = load_config("demo_b_joint", ["protocol=loso", "train_sources=[ham]", "test_sources=[ham]"])
    for job in jobs(manifest, config):
        images = job_images(manifest, config, job)
        held_out = (site_keys(manifest) == job.site).to_numpy()
        assert images.test.tolist() == held_out.tolist()
        train_groups = set(manifest["lesion_group"][images.train])
        assert not train_groups & set(manifest["lesion_group"][images.test])
        left_out = ~held_out & ~images.train
        expected = spanning.to_numpy() & ~held_out if job.site in ("ham/vidir_modern", "ham/vidir_molemax") else 0
        assert left_out.sum() == np.sum(expected)


@pytest.mark.parametrize("protocol", ["cv", "loso"])
def test_only_folds_keeps_those_jobs_of_the_protocol(synth_prepared: Path, protocol: str) -> None:
    manifest = load_dataset(synth_prepared).manifest
    every = jobs(manifest, load_config("demo_b_joint", [*FAST, f"protocol={protocol}", "min_site_images=20"]))
    some = jobs(manifest, load_config("demo_b_joint", [*FAST, f"protocol={protocol}", "min_site_images=20",
                                                       "only_folds=[3, 1]"]))
    assert [(j.fold, j.name) for j in some] == [(j.fold, j.name) for j in every if j.fold in (1, 3)]
    assert len(every) >= 4


def test_only_folds_naming_a_missing_fold_is_refused_before_any_work(
    synth_prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["cv", "--config", "demo_b_joint", "--data", str(synth_prepared), "--out", str(tmp_path / "r"),
            "--set", "only_folds=[0, 7]"]
    assert main(args) == 2
    assert "only_folds: fold 7 does not exist (the cv folds: [0, 1, 2, 3, 4])" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
