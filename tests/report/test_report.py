"""``crossderm report`` end to end on fake run folders: values, paired CIs, N runs / N sources, errors."""

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
from crossderm.errors import CrossdermError
from crossderm.evaluate.compare import paired_comparison
from crossderm.evaluate.groups import site_matrix
from crossderm.evaluate.predictions import compute_metrics, load_predictions
from crossderm.labels import CLASSES
from crossderm.report.build import write_report
from crossderm.report.paper import load_publication
from crossderm.runfolder import RunFolder

K = len(CLASSES)
N_PER_SOURCE = 300
N_RESAMPLES = 400
PRIORS = np.array([3, 5, 11, 2, 11, 60, 8], dtype=float)
HAM_ONLY = {"ham": 2.2, "isic": 0.6, "clinic": 0.9}
JOINT = {"ham": 2.0, "isic": 1.4, "clinic": 1.5}


def labelled_images(rng: np.random.Generator, sources: tuple[str, ...] = ("ham", "isic")) -> pd.DataFrame:
    frames = []
    for source in sources:
        y = rng.choice(K, size=N_PER_SOURCE, p=PRIORS / PRIORS.sum())
        ids = [f"{source.upper()}_{i:05d}" for i in range(N_PER_SOURCE)]
        frames.append(pd.DataFrame({"image_id": ids, "source": source, "label": [CLASSES[c] for c in y]}))
    return pd.concat(frames, ignore_index=True)


def predict(images: pd.DataFrame, noise: np.ndarray, strength: dict[str, float]) -> pd.DataFrame:
    """Softmax of shared noise plus a per-source boost of the true class: shared noise = correlated runs."""
    y = images["label"].map(CLASSES.index).to_numpy()
    logits = noise.copy()
    logits[np.arange(len(y)), y] += images["source"].map(strength).to_numpy()
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    frame = pd.concat([images.reset_index(drop=True), pd.DataFrame(probs, columns=list(CLASSES))], axis=1)
    frame["fold"] = np.arange(len(frame)) % 2
    return frame


def fake_runs(
    root: Path, sources: tuple[str, ...], strengths: dict[str, dict[str, float]], seed: int = 7
) -> dict[str, tuple[Path, pd.DataFrame]]:
    """Runs named after ``strengths``' keys, predicting the same images of ``sources`` with shared noise."""
    rng = np.random.default_rng(seed)
    images = labelled_images(rng, sources)
    noise = rng.normal(size=(len(images), K))
    runs = {}
    for name, strength in strengths.items():
        frame = predict(images, noise, strength)
        runs[name] = (write_run(root, name, frame, ["ham", "isic"] if "joint" in name else ["ham"]), frame)
    return runs


def write_run(root: Path, name: str, frame: pd.DataFrame, train_sources: list[str]) -> Path:
    """A finished `crossderm cv` folder, metrics.json made by the evaluate module from the OOF predictions."""
    folder = RunFolder(root / name)
    for k in (0, 1):
        fold = folder.fold(k)
        fold.path.mkdir(parents=True)
        epochs = np.arange(1, 4)
        pd.DataFrame(
            {"epoch": epochs, "train_loss": 1.5 / epochs + 0.1 * k, "val_macro_f1": 0.3 + 0.1 * epochs - 0.02 * k}
        ).to_csv(fold.history, index=False)
    config = {
        "name": name,
        "description": f"fake {name}",
        "model": "test_convnext",
        "train_sources": train_sources,
        "test_sources": sorted(set(frame["source"])),
        "sampler": "source_balanced" if len(train_sources) > 1 else "uniform",
        "epochs": 3,
    }
    folder.config.write_text(yaml.safe_dump(config, sort_keys=False))
    info = {"experiment": name, "data": "/data", "folds": [0, 1], "parameters": 27_820_000, "environment": {}}
    folder.run_info.write_text(json.dumps(info))
    write_predictions(folder.path, frame)
    return folder.path


def write_predictions(run_dir: Path, frame: pd.DataFrame) -> None:
    folder = RunFolder(run_dir)
    frame.to_csv(folder.oof_predictions, index=False)
    folder.metrics.write_text(json.dumps(compute_metrics(load_predictions(folder.oof_predictions), N_RESAMPLES, 0)))


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, tuple[Path, pd.DataFrame]]:
    return fake_runs(tmp_path, ("ham", "isic"), {"a_ham_only": HAM_ONLY, "b_joint": JOINT})


def report(capsys: pytest.CaptureFixture[str], out: Path, *run_dirs: Path, options: tuple[str, ...] = ()) -> str:
    """``crossderm report RUN_DIR... --out OUT`` in-process; returns stdout."""
    assert main(["report", *map(str, run_dirs), "--out", str(out), *options]) == 0
    return capsys.readouterr().out


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def sections(out: Path) -> dict[str, str]:
    """report.md by ``## title``."""
    parts = re.split(r"^## (.+)$", (out / "report.md").read_text(), flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def png_width(path: Path) -> int:
    """Width in pixels from the PNG header (IHDR)."""
    return int.from_bytes(path.read_bytes()[16:20], "big")


def metrics_of(run_dir: Path) -> dict:
    return json.loads(RunFolder(run_dir).metrics.read_text())


def sk_value(frame: pd.DataFrame, source: str, metric: str) -> float:
    rows = frame[frame["source"] == source]
    y = rows["label"].map(CLASSES.index).to_numpy()
    pred = rows[list(CLASSES)].to_numpy().argmax(axis=1)
    if metric == "macro_f1":
        return f1_score(y, pred, labels=np.unique(y), average="macro", zero_division=0)
    return accuracy_score(y, pred)


def sk_gap(frame: pd.DataFrame, reference: str, other: str, metric: str) -> float:
    """reference - other of macro-F1 or accuracy, computed independently with scikit-learn."""
    return sk_value(frame, reference, metric) - sk_value(frame, other, metric)


def test_two_runs_values_paired_ci_and_self_contained_html(
    runs: dict[str, tuple[Path, pd.DataFrame]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (dir_a, frame_a), (dir_b, frame_b) = runs["a_ham_only"], runs["b_joint"]
    out = tmp_path / "report"
    stdout = report(capsys, out, dir_a, dir_b)
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert len(figures) == 5  # per-class F1, 2 x confusion, 2 x curves
    summary = summary_of(out)
    assert summary["reference"] == "a_ham_only" and summary["reference_source"] == "ham"
    for run_dir, name in ((dir_a, "a_ham_only"), (dir_b, "b_joint")):
        metrics, entry = metrics_of(run_dir), summary["experiments"][name]
        assert entry["parameters"] == 27_820_000 and entry["model"] == "test_convnext"
        assert entry["test"] == {
            s: {m: metrics["sources"][s][m] for m in ("macro_f1", "accuracy", "balanced_accuracy")}
            for s in ("ham", "isic")
        }
        assert entry["gaps"] == {"ham - isic": {m: metrics["gaps"]["ham - isic"][m] for m in ("macro_f1", "accuracy")}}
    assert summary["experiments"]["b_joint"]["train_sources"] == ["ham", "isic"]
    assert summary["experiments"]["b_joint"]["sampler"] == "source_balanced"
    assert summary["bootstrap"] == {"n_resamples": N_RESAMPLES, "seed": 0, "ci": 0.95, "method": "paired percentile"}

    comparison = summary["comparisons"]["b_joint vs a_ham_only"]
    for metric in ("macro_f1", "accuracy"):
        gap_a, gap_b = sk_gap(frame_a, "ham", "isic", metric), sk_gap(frame_b, "ham", "isic", metric)
        entry = comparison["gap_reduction"]["ham - isic"][metric]
        assert entry["value"] == pytest.approx(gap_a - gap_b, abs=1e-12)
        assert entry["relative"] == pytest.approx(100 * (gap_a - gap_b) / gap_a, abs=1e-9)
        assert entry["ci_low"] < entry["value"] < entry["ci_high"]
        # Independent resampling of the two runs would give roughly this width; pairing must beat it clearly.
        widths = [m["gaps"]["ham - isic"][metric] for m in (metrics_of(dir_a), metrics_of(dir_b))]
        assert entry["ci_high"] - entry["ci_low"] < 0.8 * np.hypot(*(w["ci_high"] - w["ci_low"] for w in widths))
    assert comparison["gap_reduction"]["ham - isic"]["macro_f1"]["value"] > 0.05  # the joint run closes the gap
    gain = comparison["macro_f1_gain"]
    assert list(gain) == ["isic"]
    expected_gain = sk_value(frame_b, "isic", "macro_f1") - sk_value(frame_a, "isic", "macro_f1")
    assert gain["isic"]["value"] == pytest.approx(expected_gain, abs=1e-12)
    assert gain["isic"]["ci_low"] < gain["isic"]["value"] < gain["isic"]["ci_high"]

    page = (out / "report.html").read_text()
    assert not re.search(r"https?://", page)
    assert "<script" not in page and "<link" not in page
    assert page.count('src="data:image/png;base64,') == len(figures)
    assert page.count('<tr class="paper">') == 2 + 2 + 2 + 1 + 1  # two per source table, gap; one per comparison
    md = sections(out)
    assert list(md)[:2] == ["Table 1 (ham-test): headline metrics", "Table 1 (isic-test): headline metrics"]
    assert "| paper, real data: (a) HAM-only |" in md["Table 1 (ham-test): headline metrics"]
    assert "0.7401 [0.7252, 0.7541]" in md["Table 1 (ham-test): headline metrics"]
    assert "0.5976 [0.5817, 0.6128] | 69.24 % |" in md["Table 1 (isic-test): headline metrics"]
    # the paper's gap, reduction and gain are derived from its published points
    gaps = md["Generalisation gap (ham - each other test source)"]
    assert "| paper, real data: (a) HAM-only | +0.2604 | n/a |" in gaps
    reduction = md["Gap reduction (ham - isic) against the reference run 'a_ham_only'"]
    assert "| paper, real data: (b) joint vs (a) HAM-only | +0.1179 | +45.3 % | n/a | n/a |" in reduction
    assert "(b) joint vs (a) HAM-only | +0.1675 |" in md["macro-F1 gain (other run - reference run 'a_ham_only')"]
    assert all(f"figures/{name}" in md["Figures"] for name in figures)
    ham_f1 = metrics_of(dir_a)["sources"]["ham"]["macro_f1"]["value"]
    assert f"| a_ham_only | test_convnext | 27.8 | ham | uniform | 300 | {ham_f1:.4f} [" in md[
        "Table 1 (ham-test): headline metrics"
    ]
    assert "a_ham_only" in stdout and "gap reduction (ham - isic)" in stdout and "isic macro-F1 gain" in stdout


def test_published_numbers_are_validated_data() -> None:
    publication = load_publication()
    assert publication.label == "paper, real data"
    first, second = publication.experiments
    assert (first.point("ham", "macro_f1"), first.point("isic", "macro_f1")) == (0.6905, 0.4301)
    assert second.published("ham", "macro_f1") == {"value": 0.7401, "ci_low": 0.7252, "ci_high": 0.7541}
    assert second.point("isic", "accuracy") == 0.6924 and first.point("isic", "accuracy") is None


def test_one_run_has_no_comparison(
    runs: dict[str, tuple[Path, pd.DataFrame]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    report(capsys, out, runs["a_ham_only"][0])
    summary = summary_of(out)
    assert summary["comparisons"] == {} and list(summary["experiments"]) == ["a_ham_only"]
    md = sections(out)
    assert "Only one run: nothing to compare" in md["Comparisons"]
    assert not any(title.startswith("Gap reduction") for title in md)
    assert len(list((out / "figures").glob("*.png"))) == 3


def test_three_runs_each_compared_with_the_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    strengths = {"a_ham_only": HAM_ONLY, "b_joint": JOINT, "c_joint_weaker": {"ham": 2.1, "isic": 1.0}}
    runs = fake_runs(tmp_path, ("ham", "isic"), strengths)
    out = tmp_path / "report"
    stdout = report(capsys, out, *(run_dir for run_dir, _ in runs.values()))
    summary = summary_of(out)
    assert list(summary["comparisons"]) == ["b_joint vs a_ham_only", "c_joint_weaker vs a_ham_only"]
    frame_a = runs["a_ham_only"][1]
    for name in ("b_joint", "c_joint_weaker"):
        expected = paired_comparison(frame_a, runs[name][1], "ham", N_RESAMPLES, 0, 0.95)
        assert summary["comparisons"][f"{name} vs a_ham_only"] == expected
    # the weaker joint run closes less of the gap than the stronger one
    reductions = [c["gap_reduction"]["ham - isic"]["macro_f1"]["value"] for c in summary["comparisons"].values()]
    assert reductions[0] > reductions[1]
    reduction_table = sections(out)["Gap reduction (ham - isic) against the reference run 'a_ham_only'"]
    assert "| b_joint vs a_ham_only |" in reduction_table and "| c_joint_weaker vs a_ham_only |" in reduction_table
    assert stdout.count(" vs a_ham_only: ") == 2
    assert len(list((out / "figures").glob("*.png"))) == 1 + 3 + 3


def test_third_source_gets_its_table_and_gap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = fake_runs(tmp_path, ("ham", "isic", "clinic"), {"a_ham_only": HAM_ONLY, "b_joint": JOINT})
    out = tmp_path / "report"
    report(capsys, out, *(run_dir for run_dir, _ in runs.values()))
    summary = summary_of(out)
    for name, (_, frame) in runs.items():
        entry = summary["experiments"][name]
        assert list(entry["test"]) == ["ham", "isic", "clinic"]
        assert list(entry["gaps"]) == ["ham - isic", "ham - clinic"]
        for other in ("isic", "clinic"):
            assert entry["gaps"][f"ham - {other}"]["macro_f1"]["value"] == pytest.approx(
                sk_gap(frame, "ham", other, "macro_f1"), abs=1e-12
            )
    comparison = summary["comparisons"]["b_joint vs a_ham_only"]
    assert list(comparison["gap_reduction"]) == ["ham - isic", "ham - clinic"]
    assert list(comparison["macro_f1_gain"]) == ["isic", "clinic"]
    frame_a, frame_b = runs["a_ham_only"][1], runs["b_joint"][1]
    clinic_reduction = sk_gap(frame_a, "ham", "clinic", "accuracy") - sk_gap(frame_b, "ham", "clinic", "accuracy")
    assert comparison["gap_reduction"]["ham - clinic"]["accuracy"]["value"] == pytest.approx(clinic_reduction)

    md = sections(out)
    clinic = md["Table 1 (clinic-test): headline metrics"]
    assert "| a_ham_only |" in clinic and "| b_joint |" in clinic and "| paper, real data" not in clinic
    assert "| paper, real data: (b) joint |" in md["Table 1 (isic-test): headline metrics"]
    gap_header = md["Generalisation gap (ham - each other test source)"].strip().splitlines()[0]
    assert "ham - isic macro-F1" in gap_header and "ham - clinic accuracy" in gap_header
    assert "Gap reduction (ham - clinic) against the reference run 'a_ham_only'" in md
    assert "clinic-test gain" in md["macro-F1 gain (other run - reference run 'a_ham_only')"]
    # one confusion panel per source: the three-source figure is wider than a two-source one
    two_source = fake_runs(tmp_path / "two", ("ham", "isic"), {"a_ham_only": HAM_ONLY})
    report(capsys, tmp_path / "two_report", two_source["a_ham_only"][0])
    widths = [png_width(o / "figures" / "confusion_01_a_ham_only.png") for o in (out, tmp_path / "two_report")]
    assert widths[0] > widths[1] * 1.3


def test_runs_with_different_sources_compare_on_shared_ones(
    runs: dict[str, tuple[Path, pd.DataFrame]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    three = fake_runs(tmp_path / "three", ("ham", "isic", "clinic"), {"c_joint": JOINT}, seed=7)
    frame_c = three["c_joint"][1]
    # the same ham/isic images as the fixture's runs (same seed draws the ham and isic labels first)
    shared = frame_c[frame_c["source"] != "clinic"]
    assert shared[["image_id", "label"]].equals(runs["a_ham_only"][1][["image_id", "label"]])
    out = tmp_path / "report"
    report(capsys, out, runs["a_ham_only"][0], three["c_joint"][0])
    summary = summary_of(out)
    assert list(summary["experiments"]["a_ham_only"]["gaps"]) == ["ham - isic"]
    comparison = summary["comparisons"]["c_joint vs a_ham_only"]
    assert list(comparison["gap_reduction"]) == ["ham - isic"] and list(comparison["macro_f1_gain"]) == ["isic"]
    md = sections(out)
    clinic = md["Table 1 (clinic-test): headline metrics"]
    assert "| c_joint |" in clinic and "| a_ham_only |" not in clinic
    gap_rows = md["Generalisation gap (ham - each other test source)"]
    assert re.search(r"\| a_ham_only \| \+[^|]+ \| \+[^|]+ \| n/a \| n/a \|", gap_rows)


def test_non_ham_sources_and_reference_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = fake_runs(tmp_path, ("isic", "clinic"), {"a_ham_only": HAM_ONLY, "b_joint": JOINT})
    dirs = [run_dir for run_dir, _ in runs.values()]
    report(capsys, tmp_path / "default", *dirs)
    summary = summary_of(tmp_path / "default")
    assert summary["reference_source"] == "ham"  # what the runs' metrics.json say, absent from the data
    assert all(entry["gaps"] == {} for entry in summary["experiments"].values())
    comparison = summary["comparisons"]["b_joint vs a_ham_only"]
    assert comparison["gap_reduction"] == {} and list(comparison["macro_f1_gain"]) == ["isic", "clinic"]
    assert "No gap: no run tests on the reference source 'ham'" in "".join(sections(tmp_path / "default").values())

    out = tmp_path / "from_isic"
    stdout = report(capsys, out, *dirs, options=("--reference-source", "isic"))
    summary = summary_of(out)
    assert summary["reference_source"] == "isic"
    for name, (run_dir, frame) in runs.items():
        gap = summary["experiments"][name]["gaps"]["isic - clinic"]
        assert gap["macro_f1"]["value"] == pytest.approx(sk_gap(frame, "isic", "clinic", "macro_f1"), abs=1e-12)
        # the same gap `crossderm evaluate --reference-source isic` writes, CI included
        evaluated = compute_metrics(load_predictions(RunFolder(run_dir).oof_predictions), N_RESAMPLES, 0, "isic")
        assert gap == {m: evaluated["gaps"]["isic - clinic"][m] for m in ("macro_f1", "accuracy")}
    comparison = summary["comparisons"]["b_joint vs a_ham_only"]
    assert list(comparison["gap_reduction"]) == ["isic - clinic"] and list(comparison["macro_f1_gain"]) == ["clinic"]
    assert "gap reduction (isic - clinic)" in stdout
    with pytest.raises(CrossdermError, match="reference source 'ham' is not a test source of any run"):
        write_report(dirs, tmp_path / "bad", reference_source="ham")


def test_different_image_sets_fail(runs: dict[str, tuple[Path, pd.DataFrame]], tmp_path: Path) -> None:
    dir_b, frame_b = runs["b_joint"]
    write_predictions(dir_b, frame_b.drop(index=[N_PER_SOURCE + 3, N_PER_SOURCE + 9]))
    out = tmp_path / "report"
    with pytest.raises(CrossdermError) as error:
        write_report([runs["a_ham_only"][0], dir_b], out)
    message = str(error.value)
    assert "\n" not in message and f"{runs['a_ham_only'][0]} and {dir_b} predict different isic images" in message
    assert "2 only in the first" in message and "ISIC_00003" in message
    assert not out.exists()


def test_stale_metrics_fail(runs: dict[str, tuple[Path, pd.DataFrame]], tmp_path: Path) -> None:
    dir_b, frame_b = runs["b_joint"]
    shuffled = frame_b.copy()
    shuffled[list(CLASSES)] = frame_b[list(CLASSES)].to_numpy()[::-1]
    shuffled.to_csv(RunFolder(dir_b).oof_predictions, index=False)
    with pytest.raises(CrossdermError, match="metrics do not match oof_predictions.csv") as error:
        write_report([dir_b], tmp_path / "report")  # checked on load, so even a single run is refused
    assert str(RunFolder(dir_b).metrics) in str(error.value)
    frame_b[frame_b["source"] == "ham"].to_csv(RunFolder(dir_b).oof_predictions, index=False)
    with pytest.raises(CrossdermError, match="sources ham, isic do not match oof_predictions.csv's ham"):
        write_report([dir_b], tmp_path / "report")


def test_old_metrics_format_fails(runs: dict[str, tuple[Path, pd.DataFrame]], tmp_path: Path) -> None:
    folder = RunFolder(runs["a_ham_only"][0])
    metrics = metrics_of(folder.path)
    folder.metrics.write_text(json.dumps({**metrics["sources"], "gap": metrics["gaps"]["ham - isic"]}))
    with pytest.raises(CrossdermError, match=f"{re.escape(str(folder.metrics))}: no per-source 'sources' section"):
        write_report([folder.path], tmp_path / "report")


@pytest.mark.parametrize("missing", ["metrics", "run_info", "config", "oof_predictions"])
def test_missing_file_names_it(runs: dict[str, tuple[Path, pd.DataFrame]], tmp_path: Path, missing: str) -> None:
    path = getattr(RunFolder(runs["a_ham_only"][0]), missing)
    path.unlink()
    with pytest.raises(CrossdermError) as error:
        write_report([runs["a_ham_only"][0], runs["b_joint"][0]], tmp_path / "report")
    assert "\n" not in str(error.value) and str(error.value).startswith(str(path))


def test_missing_folder_and_duplicate_names_fail(runs: dict[str, tuple[Path, pd.DataFrame]], tmp_path: Path) -> None:
    with pytest.raises(CrossdermError, match=f"{re.escape(str(tmp_path / 'nowhere'))}: no such run folder"):
        write_report([tmp_path / "nowhere"], tmp_path / "report")
    dir_a = runs["a_ham_only"][0]
    shutil.copytree(dir_a, tmp_path / "a_again")
    with pytest.raises(CrossdermError, match="'a_ham_only' is also the name of") as error:
        write_report([dir_a, tmp_path / "a_again"], tmp_path / "report")
    assert str(dir_a) in str(error.value)


def test_existing_report_needs_overwrite(
    runs: dict[str, tuple[Path, pd.DataFrame]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    report(capsys, out, runs["a_ham_only"][0])
    (out / "marker").write_text("")
    with pytest.raises(CrossdermError, match="exists and is not empty"):
        write_report([runs["a_ham_only"][0]], out)
    assert (out / "marker").is_file()
    report(capsys, out, runs["a_ham_only"][0], options=("--overwrite",))
    assert not (out / "marker").exists() and (out / "summary.json").is_file()


# ---- per site, subgroups, site matrix ------------------------------------------------------------------------


def with_sites(frame: pd.DataFrame) -> pd.DataFrame:
    """Site, sex and age by image position, so every run of the same images has the same groups.

    ham: vidir_modern 150, rosendahl 138, tiny 12 (too few); isic: bcn 150, msk 150. Sex blank for every 25th
    image (12 per source, too few), age blank for every 10th.
    """
    index = frame.groupby("source").cumcount().to_numpy()
    ham = (frame["source"] == "ham").to_numpy()
    site = np.where(ham, np.where(index < 150, "vidir_modern", np.where(index < 288, "rosendahl", "tiny")),
                    np.where(index < 150, "bcn", "msk"))
    sex = np.where(index % 25 == 0, "", np.where(index % 2 == 0, "male", "female"))
    age = np.where(index % 10 == 0, np.nan, (index * 7) % 90).astype(float)
    return frame.assign(site=site, sex=sex, age=age)


def row_cells(table: str, first: str) -> list[str]:
    """The cells of the Markdown row whose first cell is ``first``."""
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in {table}")


def ci_text(entry: dict) -> str:
    return f"{entry['value']:.4f} [{entry['ci_low']:.4f}, {entry['ci_high']:.4f}]"


@pytest.fixture
def site_runs(tmp_path: Path) -> dict[str, tuple[Path, pd.DataFrame]]:
    rng = np.random.default_rng(7)
    images = labelled_images(rng, ("ham", "isic"))
    noise = rng.normal(size=(len(images), K))
    runs = {}
    for name, strength in {"a_ham_only": HAM_ONLY, "b_joint": JOINT}.items():
        frame = with_sites(predict(images, noise, strength))
        runs[name] = (write_run(tmp_path / "runs", name, frame, ["ham", "isic"] if "joint" in name else ["ham"]), frame)
    return runs


def test_per_site_table_plot_and_summary(
    site_runs: dict[str, tuple[Path, pd.DataFrame]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (dir_a, _), (dir_b, _) = site_runs["a_ham_only"], site_runs["b_joint"]
    out = tmp_path / "report"
    stdout = report(capsys, out, dir_a, dir_b)
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert "site_macro_f1.png" in figures and len(figures) == 6
    table = sections(out)["Per site: headline metrics"]
    columns = [f"{name} {c}" for name in ("a_ham_only", "b_joint") for c in ("n", "macro-F1", "accuracy")]
    assert row_cells(table, "site") == ["site", *columns]
    assert row_cells(table, "ham/tiny") == ["ham/tiny", *["12", "too few (n = 12)", "too few"] * 2]
    summary = summary_of(out)
    for run_dir, name in ((dir_a, "a_ham_only"), (dir_b, "b_joint")):
        metrics, entry = metrics_of(run_dir), summary["experiments"][name]
        assert list(entry["sites"]) == ["ham/rosendahl", "ham/tiny", "ham/vidir_modern", "isic/bcn", "isic/msk"]
        bcn = metrics["sites"]["isic/bcn"]
        headline = {m: bcn[m] for m in ("macro_f1", "accuracy", "balanced_accuracy")}
        assert entry["sites"]["isic/bcn"] == {"source": "isic", "site": "bcn", "n": 150, **headline}
        assert entry["sites"]["ham/tiny"] == {"source": "ham", "site": "tiny", "n": 12, "too_few": True}
        assert entry["site_summary"] == metrics["site_summary"]
        offset = 1 + 3 * ["a_ham_only", "b_joint"].index(name)
        assert row_cells(table, "isic/bcn")[offset : offset + 2] == ["150", ci_text(bcn["macro_f1"])]
    s_a = summary["experiments"]["a_ham_only"]["site_summary"]
    assert row_cells(table, "mean over sites")[1:3] == ["4 sites", ci_text(s_a["mean_macro_f1"])]
    worst = s_a["worst_site"]
    assert row_cells(table, "worst site")[2] == f"{ci_text(worst['macro_f1'])} ({worst['site']})"
    assert row_cells(table, "minimum over sites (per resample)")[2] == ci_text(s_a["min_macro_f1"])
    # the HAM-only model is worst on an isic site, the joint one is not as bad there
    assert s_a["worst_site"]["site"].startswith("isic/")
    assert "a_ham_only: macro-F1 mean over 4 sites" in stdout
    page = (out / "report.html").read_text()
    assert "Per site: headline metrics" in page and page.count('src="data:image/png;base64,') == len(figures)
    assert "![Macro-F1 per site" in sections(out)["Figures"]


def test_by_sex_and_age_subgroups_from_the_predictions(
    site_runs: dict[str, tuple[Path, pd.DataFrame]], runs: dict[str, tuple[Path, pd.DataFrame]], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dir_a = site_runs["a_ham_only"][0]
    assert "subgroups" not in metrics_of(dir_a)  # cv writes sites only: the report computes the subgroups
    plain = runs["b_joint"][0]  # a run without any optional column
    out = tmp_path / "report"
    report(capsys, out, dir_a, plain, options=("--by", "sex", "--by", "age_bin"))
    summary = summary_of(out)
    predictions = load_predictions(RunFolder(dir_a).oof_predictions)
    expected = compute_metrics(predictions, N_RESAMPLES, 0, by=("sex", "age_bin"))
    entry = summary["experiments"]["a_ham_only"]
    assert list(entry["subgroups"]) == ["sex", "age_bin"]
    for grouping in ("sex", "age_bin"):
        for key, cell in expected["subgroups"][grouping].items():
            got = entry["subgroups"][grouping][key]
            assert got == cell if cell.get("too_few") else got["macro_f1"] == cell["macro_f1"]
    assert entry["subgroups"]["sex"]["ham/missing"] == {"source": "ham", "sex": "missing", "n": 12, "too_few": True}
    md = sections(out)
    sex = md["Subgroups by sex: headline metrics"]
    assert "| ham/missing | 12 | too few (n = 12) | too few |" in sex
    assert "Without this column (not shown): b_joint." in sex
    assert list(expected["subgroups"]["age_bin"])[:6] == [f"ham/{b}" for b in ("<30", "30-44", "45-59", "60-74",
                                                                               "75+", "missing")]
    assert "| ham/75+ |" in md["Subgroups by age_bin: headline metrics"]
    # the run without sites: no per-site values, and the report still has its per-site table for the other
    assert summary["experiments"]["b_joint"]["sites"] == {}
    assert summary["experiments"]["b_joint"]["site_summary"] is None
    assert "b_joint n" not in md["Per site: headline metrics"]


def test_runs_without_sites_have_no_site_sections(
    runs: dict[str, tuple[Path, pd.DataFrame]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    report(capsys, out, runs["a_ham_only"][0], runs["b_joint"][0], options=("--by", "sex"))
    md = sections(out)
    assert not any(title.startswith(("Per site", "Site matrix")) for title in md)
    assert "No run's predictions have a 'sex' column." in md["Subgroups by sex: headline metrics"]
    assert len(list((out / "figures").glob("*.png"))) == 5
    for entry in summary_of(out)["experiments"].values():
        assert entry["sites"] == {} and entry["site_summary"] is None and "subgroups" not in entry


def test_sites_missing_from_metrics_json_are_computed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An older metrics.json (per source only) of predictions with a site column: the report evaluates the sites."""
    frame = with_sites(predict(labelled_images(np.random.default_rng(1)), np.zeros((600, K)), JOINT))
    run_dir = write_run(tmp_path / "runs", "old", frame, ["ham"])
    folder = RunFolder(run_dir)
    per_source = compute_metrics(load_predictions(folder.oof_predictions), N_RESAMPLES, 0, by=())
    folder.metrics.write_text(json.dumps(per_source))
    out = tmp_path / "report"
    report(capsys, out, run_dir)
    expected = compute_metrics(load_predictions(folder.oof_predictions), N_RESAMPLES, 0)
    entry = summary_of(out)["experiments"]["old"]
    assert entry["site_summary"] == expected["site_summary"]
    assert entry["sites"]["ham/rosendahl"]["macro_f1"] == expected["sites"]["ham/rosendahl"]["macro_f1"]


def test_stale_site_metrics_fail(site_runs: dict[str, tuple[Path, pd.DataFrame]], tmp_path: Path) -> None:
    dir_a, frame = site_runs["a_ham_only"]
    frame.assign(site=np.where(frame["site"] == "tiny", "rosendahl", frame["site"])).to_csv(
        RunFolder(dir_a).oof_predictions, index=False
    )
    with pytest.raises(CrossdermError, match="per-site images do not match oof_predictions.csv's site column"):
        write_report([dir_a], tmp_path / "report")


def test_site_matrix_heatmap_and_table(
    site_runs: dict[str, tuple[Path, pd.DataFrame]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dir_a, frame = site_runs["a_ham_only"]
    keys = sorted(set(frame["source"] + "/" + frame["site"]))
    predicted = pd.concat(
        [frame[(frame["source"] + "/" + frame["site"]) != train].assign(train_site=train) for train in keys],
        ignore_index=True,
    )
    matrix = site_matrix(predicted, N_RESAMPLES, 0)
    folder = RunFolder(dir_a)
    folder.metrics.write_text(json.dumps({**metrics_of(dir_a), "site_matrix": matrix}))
    out = tmp_path / "report"
    report(capsys, out, dir_a)
    assert (out / "figures" / "site_matrix_01_a_ham_only.png").is_file()
    table = sections(out)["Site matrix of a_ham_only: macro-F1 (rows = training site, columns = test site)"]
    assert table.strip().splitlines()[0] == "| train \\ test | " + " | ".join(keys) + " |"
    cell = matrix["ham/rosendahl"]["isic/bcn"]["macro_f1"]
    cells = row_cells(table, "ham/rosendahl")
    assert cells[1 + keys.index("ham/rosendahl")] == "-"  # never predicted by its own site's model
    assert cells[1 + keys.index("isic/bcn")] == ci_text(cell)
    assert cells[1 + keys.index("ham/tiny")] == "too few (n = 12)"
    entry = summary_of(out)["experiments"]["a_ham_only"]["site_matrix"]
    assert entry["ham/rosendahl"]["isic/bcn"]["macro_f1"] == cell and list(entry) == keys
    assert "Site matrix of a_ham_only" in (out / "report.html").read_text()
