"""``crossderm report`` end to end on fake run folders: values, paired CIs, self-contained HTML, errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import accuracy_score, f1_score

from crossderm.cli import main
from crossderm.evaluate.predictions import compute_metrics, load_predictions
from crossderm.labels import CLASSES

K = len(CLASSES)
N_PER_SOURCE = 300
N_RESAMPLES = 400
PRIORS = np.array([3, 5, 11, 2, 11, 60, 8], dtype=float)


def labelled_images(rng: np.random.Generator) -> pd.DataFrame:
    frames = []
    for source in ("ham", "isic"):
        y = rng.choice(K, size=N_PER_SOURCE, p=PRIORS / PRIORS.sum())
        frames.append(
            pd.DataFrame(
                {
                    "image_id": [f"{source.upper()}_{i:05d}" for i in range(N_PER_SOURCE)],
                    "source": source,
                    "label": [CLASSES[c] for c in y],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def predict(images: pd.DataFrame, noise: np.ndarray, strength: dict[str, float]) -> pd.DataFrame:
    """Softmax of shared noise plus a per-source boost of the true class: shared noise = correlated runs."""
    y = images["label"].map(CLASSES.index).to_numpy()
    logits = noise.copy()
    logits[np.arange(len(y)), y] += images["source"].map(strength).to_numpy()
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    frame = pd.concat([images, pd.DataFrame(probs, columns=list(CLASSES))], axis=1)
    frame["fold"] = np.arange(len(frame)) % 2
    return frame


def write_run(root: Path, name: str, frame: pd.DataFrame, train_sources: list[str], sampler: str) -> Path:
    """A finished `crossderm cv` folder, metrics.json made by the evaluate module from the OOF predictions."""
    run_dir = root / name
    for fold in (0, 1):
        (run_dir / f"fold_{fold}").mkdir(parents=True)
        epochs = np.arange(1, 4)
        pd.DataFrame(
            {
                "epoch": epochs,
                "train_loss": 1.5 / epochs + 0.1 * fold,
                "val_macro_f1": 0.3 + 0.1 * epochs - 0.02 * fold,
                "lr": 1e-4,
                "images_per_s": 100.0,
                "seconds": 1.0,
            }
        ).to_csv(run_dir / f"fold_{fold}" / "history.csv", index=False)
    config = {
        "name": name,
        "description": f"fake {name}",
        "model": "test_convnext",
        "train_sources": train_sources,
        "test_sources": ["ham", "isic"],
        "sampler": sampler,
        "epochs": 3,
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (run_dir / "run.json").write_text(
        json.dumps({"experiment": name, "data": "/data", "parameters": 27_820_000, "environment": {}})
    )
    write_predictions(run_dir, frame)
    return run_dir


def write_predictions(run_dir: Path, frame: pd.DataFrame) -> None:
    path = run_dir / "oof_predictions.csv"
    frame.to_csv(path, index=False)
    metrics = compute_metrics(load_predictions(path), N_RESAMPLES, 0)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, tuple[Path, pd.DataFrame]]:
    rng = np.random.default_rng(7)
    images = labelled_images(rng)
    noise = rng.normal(size=(len(images), K))
    ham_only = predict(images, noise, {"ham": 2.2, "isic": 0.6})
    joint = predict(images, noise, {"ham": 2.0, "isic": 1.4})
    return {
        "a": (write_run(tmp_path, "a_ham_only", ham_only, ["ham"], "uniform"), ham_only),
        "b": (write_run(tmp_path, "b_joint", joint, ["ham", "isic"], "source_balanced"), joint),
    }


def report(capsys: pytest.CaptureFixture[str], out: Path, *run_dirs: Path) -> tuple[int, str, str]:
    code = main(["report", *map(str, run_dirs), "--out", str(out)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def sklearn_gap(frame: pd.DataFrame, metric: str) -> float:
    """HAM - ISIC of macro-F1 or accuracy, computed independently with scikit-learn."""
    values = []
    for source in ("ham", "isic"):
        rows = frame[frame["source"] == source]
        y = rows["label"].map(CLASSES.index).to_numpy()
        pred = rows[list(CLASSES)].to_numpy().argmax(axis=1)
        if metric == "macro_f1":
            values.append(f1_score(y, pred, labels=np.unique(y), average="macro", zero_division=0))
        else:
            values.append(accuracy_score(y, pred))
    return values[0] - values[1]


def test_report_files_values_and_paired_ci(
    runs: dict[str, tuple[Path, pd.DataFrame]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (dir_a, frame_a), (dir_b, frame_b) = runs["a"], runs["b"]
    out = tmp_path / "report"
    code, stdout, _ = report(capsys, out, dir_a, dir_b)
    assert code == 0
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert len(figures) == 5  # per-class F1, 2 x confusion, 2 x curves
    summary = json.loads((out / "summary.json").read_text())

    for run_dir, name in ((dir_a, "a_ham_only"), (dir_b, "b_joint")):
        metrics = json.loads((run_dir / "metrics.json").read_text())
        entry = summary["experiments"][name]
        assert entry["parameters"] == 27_820_000 and entry["model"] == "test_convnext"
        for source in ("ham", "isic"):
            for metric in ("macro_f1", "accuracy", "balanced_accuracy"):
                assert entry["test"][source][metric] == metrics[source][metric]
        for metric in ("macro_f1", "accuracy"):
            assert entry["gap"][metric] == metrics["gap"][metric]
    assert summary["experiments"]["b_joint"]["train_sources"] == ["ham", "isic"]
    assert summary["experiments"]["b_joint"]["sampler"] == "source_balanced"
    assert summary["bootstrap"]["n_resamples"] == N_RESAMPLES and summary["bootstrap"]["seed"] == 0

    comparison = summary["gap_reduction"]["b_joint vs a_ham_only"]
    metrics_a = json.loads((dir_a / "metrics.json").read_text())
    metrics_b = json.loads((dir_b / "metrics.json").read_text())
    for metric in ("macro_f1", "accuracy"):
        gap_a, gap_b = sklearn_gap(frame_a, metric), sklearn_gap(frame_b, metric)
        entry = comparison[metric]
        assert entry["value"] == pytest.approx(gap_a - gap_b, abs=1e-12)
        assert entry["relative"] == pytest.approx(100 * (gap_a - gap_b) / gap_a, abs=1e-9)
        assert entry["ci_low"] < entry["value"] < entry["ci_high"]
        # Independent resampling of the two runs would give roughly this width; pairing must beat it clearly.
        widths = [m["gap"][metric]["ci_high"] - m["gap"][metric]["ci_low"] for m in (metrics_a, metrics_b)]
        assert entry["ci_high"] - entry["ci_low"] < 0.8 * np.hypot(*widths)
    assert comparison["macro_f1"]["value"] > 0.05  # the joint run closes the gap
    gain = comparison["isic_macro_f1_gain"]
    assert gain["value"] == pytest.approx(
        metrics_b["isic"]["macro_f1"]["value"] - metrics_a["isic"]["macro_f1"]["value"], abs=1e-12
    )
    assert gain["ci_low"] < gain["value"] < gain["ci_high"]

    page = (out / "report.html").read_text()
    assert not re.search(r"https?://", page)
    assert "<script" not in page and "<link" not in page
    assert page.count('src="data:image/png;base64,') == len(figures)
    markdown = (out / "report.md").read_text()
    assert "paper, real data" in markdown and "0.6905" in markdown and "0.7401 [0.7252, 0.7541]" in markdown
    assert all(f"figures/{name}" in markdown for name in figures)
    assert f"{metrics_a['ham']['macro_f1']['value']:.4f}" in markdown
    assert "a_ham_only" in stdout and "gap reduction" in stdout


def test_identical_predictions_reduce_nothing(
    runs: dict[str, tuple[Path, pd.DataFrame]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dir_a, frame_a = runs["a"]
    dir_c = write_run(tmp_path, "c_copy", frame_a, ["ham"], "uniform")
    code, _, _ = report(capsys, tmp_path / "report", dir_a, dir_c)
    assert code == 0
    comparison = json.loads((tmp_path / "report" / "summary.json").read_text())["gap_reduction"]
    entry = comparison["c_copy vs a_ham_only"]
    for key in ("macro_f1", "accuracy", "isic_macro_f1_gain"):
        assert (entry[key]["value"], entry[key]["ci_low"], entry[key]["ci_high"]) == (0.0, 0.0, 0.0)


def test_different_image_sets_fail(
    runs: dict[str, tuple[Path, pd.DataFrame]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dir_b, frame_b = runs["b"]
    write_predictions(dir_b, frame_b.drop(index=[N_PER_SOURCE + 3, N_PER_SOURCE + 9]))
    out = tmp_path / "report"
    code, _, err = report(capsys, out, runs["a"][0], dir_b)
    assert code == 2 and err.count("\n") == 1
    assert "different isic images" in err and "2 only in the first" in err and "ISIC_00003" in err
    assert not out.exists()


def test_stale_metrics_fail(
    runs: dict[str, tuple[Path, pd.DataFrame]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dir_b, frame_b = runs["b"]
    shuffled = frame_b.copy()
    shuffled[list(CLASSES)] = frame_b[list(CLASSES)].to_numpy()[::-1]
    shuffled.to_csv(dir_b / "oof_predictions.csv", index=False)
    code, _, err = report(capsys, tmp_path / "report", runs["a"][0], dir_b)
    assert code == 2 and "do not match oof_predictions.csv" in err and str(dir_b) in err


@pytest.mark.parametrize("missing", ["metrics.json", "run.json", "config.yaml", "oof_predictions.csv"])
def test_missing_file_names_it(
    runs: dict[str, tuple[Path, pd.DataFrame]], tmp_path: Path, capsys: pytest.CaptureFixture[str], missing: str
) -> None:
    dir_a = runs["a"][0]
    (dir_a / missing).unlink()
    code, _, err = report(capsys, tmp_path / "report", dir_a, runs["b"][0])
    assert code == 2 and err.count("\n") == 1 and str(dir_a / missing) in err


def test_missing_folder_and_duplicate_names_fail(
    runs: dict[str, tuple[Path, pd.DataFrame]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = report(capsys, tmp_path / "report", tmp_path / "nowhere")
    assert code == 2 and f"{tmp_path / 'nowhere'}: no such run folder" in err
    dir_a = runs["a"][0]
    shutil.copytree(dir_a, tmp_path / "a_again")
    code, _, err = report(capsys, tmp_path / "report", dir_a, tmp_path / "a_again")
    assert code == 2 and "'a_ham_only'" in err and str(dir_a) in err


def test_existing_report_needs_overwrite(
    runs: dict[str, tuple[Path, pd.DataFrame]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    assert report(capsys, out, runs["a"][0])[0] == 0
    assert json.loads((out / "summary.json").read_text())["gap_reduction"] == {}
    assert report(capsys, out, runs["a"][0])[0] == 2
    assert main(["report", str(runs["a"][0]), "--out", str(out), "--overwrite"]) == 0
