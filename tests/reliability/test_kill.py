"""Fault injection: SIGKILL inside atomic writes and folder replacements of prepare, cv, pool, export and predict;
the rerun (``--resume`` for cv) ends with byte-identical outputs and no stray files.

The kill points are seeded: the n-th ``os.replace`` of the process (every atomic write and the two renames of
every folder replacement, checkpoints included). ``benchmarks/kill_sweep.py`` runs a longer sweep, also at random
times.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from killing import TINY, crossderm, digest, replace_count, strays


@pytest.fixture(scope="module")
def reference_fold(synth_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kill") / "reference"
    result = crossderm("cv", "--config", "demo_b_joint", "--data", str(synth_prepared), "--out", str(out),
                       "--fold", "0", *TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


# Two points in the default suite (a checkpoint write, a fold's final file), the rest with ``-m slow``: each
# point is a killed and a resumed cv run in subprocesses (~40 s).
@pytest.mark.parametrize("nth_replace", [2, 13, *(pytest.param(n, marks=pytest.mark.slow) for n in (5, 7, 8, 19))])
def test_cv_killed_inside_a_write_resumes_to_identical_files(
    nth_replace: int, synth_prepared: Path, reference_fold: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = ["cv", "--config", "demo_b_joint", "--data", str(synth_prepared), "--out", str(out), "--fold", "0", *TINY]
    killed = crossderm(*args, kill=("replace", nth_replace))
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = crossderm(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert digest(out) == digest(reference_fold)
    assert strays(out) == []


def test_prepare_killed_then_rerun_is_identical(synth_raw: Path, synth_prepared: Path, tmp_path: Path) -> None:
    args = ["prepare", "--ham", str(synth_raw / "HAM10000"), "--isic", str(synth_raw / "ISIC2019"),
            "--image-size", "32", "--workers", "1"]
    reference = tmp_path / "reference"
    assert crossderm(*args, "--out", str(reference)).returncode == 0
    for nth in (1, 3, 6):
        out = tmp_path / f"data{nth}"
        assert crossderm(*args, "--out", str(out), kill=("replace", nth)).returncode == -9
        assert not out.exists() or not (out / "manifest.csv").exists()  # never a half-written DATA_DIR
        assert crossderm(*args, "--out", str(out)).returncode == 0
        assert digest(out) == digest(reference)
        assert [p.name for p in tmp_path.glob(f".{out.name}*") if p.suffix != ".lock"] == []


def test_overwrite_killed_between_its_two_renames_keeps_the_old_data(synth_raw: Path, tmp_path: Path) -> None:
    from crossderm.fsutil import recover_directory

    args = ["prepare", "--ham", str(synth_raw / "HAM10000"), "--image-size", "32", "--workers", "1", "--folds", "3"]
    out = tmp_path / "data"
    assert crossderm(*args, "--out", str(out)).returncode == 0
    before = digest(out)
    probe = tmp_path / "probe"
    shutil.copytree(out, probe)
    last = replace_count(*args, "--out", str(probe), "--overwrite", "--seed", "1")  # the final staging -> DATA_DIR
    assert crossderm(*args, "--out", str(out), "--overwrite", "--seed", "1", kill=("replace", last)).returncode == -9
    assert not out.exists()  # killed between the renames: the old DATA_DIR sits complete under its backup name
    recover_directory(out)
    assert digest(out) == before
    assert crossderm(*args, "--out", str(out), "--overwrite", "--seed", "1").returncode == 0
    assert digest(out) != before and [p for p in strays(tmp_path) if p.suffix != ".lock"] == []


def test_pool_export_predict_killed_then_rerun_are_identical(synth_run: Path, synth_raw: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(synth_run, run)
    assert crossderm("pool", str(run), "--bootstrap", "50", "--no-tensorboard").returncode == 0
    pooled = digest(run)  # the same folder: its files name their own paths
    for nth in (1, 2, 4):
        assert crossderm("pool", str(run), "--bootstrap", "50", "--no-tensorboard",
                         kill=("replace", nth)).returncode == -9
        assert crossderm("pool", str(run), "--bootstrap", "50", "--no-tensorboard").returncode == 0
        assert digest(run) == pooled and strays(run) == []
    onnx = tmp_path / "export" / "model.onnx"
    for nth in (1, 3):  # the ONNX file (its sidecar is 2); the model card beside it, written last
        assert crossderm("export", "--model", str(run), "--out", str(onnx), kill=("replace", nth)).returncode == -9
        assert nth > 1 or not onnx.exists()
        assert crossderm("export", "--model", str(run), "--out", str(onnx)).returncode == 0
    reference_onnx = tmp_path / "reference" / "model.onnx"
    assert crossderm("export", "--model", str(run), "--out", str(reference_onnx)).returncode == 0
    assert onnx.read_bytes() == reference_onnx.read_bytes() and strays(onnx.parent) == []  # lock files aside
    images = sorted((synth_raw / "HAM10000").rglob("*.jpg"))[:6]
    csv = tmp_path / "pred.csv"
    assert crossderm("predict", "--model", str(run), *map(str, images), "--out", str(csv), "--threads", "1",
                     kill=("replace", 1)).returncode == -9
    assert not csv.exists()
    predict = ["predict", "--model", str(run), *map(str, images), "--threads", "1", "--out"]
    assert crossderm(*predict, str(csv)).returncode == 0
    again = tmp_path / "pred_again.csv"
    assert crossderm(*predict, str(again)).returncode == 0
    assert csv.read_bytes() == again.read_bytes() and strays(tmp_path / "export") == []
