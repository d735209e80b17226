"""``crossderm evaluate`` end to end: outputs, invariances and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score

from crossderm.cli import main
from crossderm.labels import CLASSES

K = len(CLASSES)


def predictions_frame(
    rng: np.random.Generator, source: str, n: int, absent: str | None = None
) -> pd.DataFrame:
    priors = np.array([3, 5, 11, 2, 11, 60, 2], dtype=float)
    if absent is not None:
        priors[CLASSES.index(absent)] = 0
    y = rng.choice(K, size=n, p=priors / priors.sum())
    logits = rng.normal(size=(n, K))
    logits[np.arange(n), y] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    frame = pd.DataFrame(probs, columns=list(CLASSES))
    frame.insert(0, "image_id", [f"{source.upper()}_{i:05d}" for i in range(n)])
    frame.insert(1, "source", source)
    frame.insert(2, "label", [CLASSES[c] for c in y])
    frame["model"] = "resnet50"  # an extra column, ignored
    return frame


@pytest.fixture
def two_sources(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    rng = np.random.default_rng(0)
    frame = pd.concat(
        [predictions_frame(rng, "ham", 600), predictions_frame(rng, "isic", 800, absent="df")],
        ignore_index=True,
    )
    path = tmp_path / "pred.csv"
    frame.to_csv(path, index=False)
    return path, frame


def evaluate(path: Path, out: Path, *extra: str) -> int:
    return main(["evaluate", "--predictions", str(path), "--out", str(out), "--bootstrap", "200", *extra])


def test_writes_json_and_markdown_matching_sklearn(
    two_sources: tuple[Path, pd.DataFrame], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, frame = two_sources
    out = tmp_path / "eval"
    assert evaluate(path, out) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    markdown = (out / "metrics.md").read_text()
    assert list(metrics["sources"]) == ["ham", "isic"] and list(metrics["gaps"]) == ["ham - isic"]
    assert metrics["reference_source"] == "ham"
    assert metrics["bootstrap"] == {"n_resamples": 200, "seed": 0, "ci": 0.95, "method": "percentile"}
    for source in ("ham", "isic"):
        rows = frame[frame["source"] == source]
        y = rows["label"].map(CLASSES.index).to_numpy()
        pred = rows[list(CLASSES)].to_numpy().argmax(axis=1)
        present = np.unique(y)
        section = metrics["sources"][source]
        assert section["n"] == len(rows)
        assert section["macro_f1"]["value"] == pytest.approx(
            f1_score(y, pred, labels=present, average="macro", zero_division=0), abs=1e-9
        )
        assert section["accuracy"]["value"] == pytest.approx(accuracy_score(y, pred), abs=1e-9)
        assert np.array(section["confusion_matrix"]).sum() == len(rows)
        assert section["macro_f1"]["ci_low"] < section["macro_f1"]["value"] < section["macro_f1"]["ci_high"]
    ham, isic = metrics["sources"]["ham"], metrics["sources"]["isic"]
    assert isic["per_class"]["df"] is None and isic["per_class_f1"]["df"] is None
    assert "df" not in isic["classes_present"]
    assert metrics["gaps"]["ham - isic"]["macro_f1"]["value"] == pytest.approx(
        ham["macro_f1"]["value"] - isic["macro_f1"]["value"]
    )
    value = ham["macro_f1"]
    assert f"| macro-F1 | {value['value']:.4f} [{value['ci_low']:.4f}, {value['ci_high']:.4f}] |" in markdown
    assert "## Generalisation gap (ham - isic)" in markdown
    assert "| df | 0 | n/a | n/a | n/a | n/a |" in markdown
    assert markdown in capsys.readouterr().out


def test_results_ignore_row_order_and_other_sources(
    two_sources: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    """Each source is sorted and seeded by its name: shuffling rows or dropping a source changes nothing."""
    path, frame = two_sources
    assert evaluate(path, tmp_path / "a") == 0
    shuffled = tmp_path / "shuffled.csv"
    frame.sample(frac=1, random_state=1).to_csv(shuffled, index=False)
    assert evaluate(shuffled, tmp_path / "b") == 0
    ham_only = tmp_path / "ham.csv"
    frame[frame["source"] == "ham"].to_csv(ham_only, index=False)
    assert evaluate(ham_only, tmp_path / "c") == 0
    first = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert json.loads((tmp_path / "b" / "metrics.json").read_text()) == first
    alone = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert list(alone["sources"]) == ["ham"] and alone["gaps"] == {}
    assert alone["sources"]["ham"] == first["sources"]["ham"]
    assert evaluate(path, tmp_path / "d", "--seed", "1") == 0
    assert json.loads((tmp_path / "d" / "metrics.json").read_text())["sources"]["ham"] != first["sources"]["ham"]


def test_reference_source_names_every_gap(two_sources: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    """A third source gets its own gap against the reference; another reference flips every gap's sign."""
    path, frame = two_sources
    third = frame[frame["source"] == "isic"].assign(source="clinic")
    with_third = tmp_path / "three.csv"
    pd.concat([frame, third]).to_csv(with_third, index=False)
    assert evaluate(with_third, tmp_path / "a") == 0
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert list(metrics["gaps"]) == ["ham - isic", "ham - clinic"]
    assert metrics["gaps"]["ham - clinic"]["other"] == "clinic"
    # the same images under another name: same point gap, independent resamples
    assert metrics["gaps"]["ham - clinic"]["macro_f1"]["value"] == metrics["gaps"]["ham - isic"]["macro_f1"]["value"]
    assert evaluate(with_third, tmp_path / "b", "--reference-source", "isic") == 0
    flipped = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert list(flipped["gaps"]) == ["isic - ham", "isic - clinic"]
    assert flipped["gaps"]["isic - ham"]["accuracy"]["value"] == pytest.approx(
        -metrics["gaps"]["ham - isic"]["accuracy"]["value"]
    )


def small_frame() -> pd.DataFrame:
    frame = predictions_frame(np.random.default_rng(1), "ham", 6).astype(str)
    frame.loc[5, "source"] = "isic"
    frame.loc[5, "image_id"] = frame.loc[0, "image_id"]  # same id in another source is fine
    return frame


def make_bad(case: str) -> tuple[pd.DataFrame, int | None, str]:
    """A small CSV with one defect, the defect's line number (None: file level) and a message part."""
    frame = small_frame()
    i = 2  # data row index -> line i + 2
    if case == "missing column":
        return frame.drop(columns=["vasc", "label"]), None, "missing column(s) label, vasc"
    if case == "nan":
        frame.loc[i, "mel"] = "nan"
        return frame, i + 2, "probability mel is not a finite number ('nan')"
    if case == "blank probability":
        frame.loc[i, "bcc"] = ""
        return frame, i + 2, "probability bcc is not a finite number ('')"
    if case == "non-numeric":
        frame.loc[i, "nv"] = "0.3x"
        return frame, i + 2, "probability nv is not a finite number ('0.3x')"
    if case == "negative":
        probs = frame.loc[i, list(CLASSES)].astype(float)
        probs["akiec"], probs["nv"] = -0.05, probs["nv"] + probs["akiec"] + 0.05
        frame.loc[i, list(CLASSES)] = probs.astype(str)
        return frame, i + 2, "probability akiec is negative (-0.05)"
    if case == "sum":
        frame.loc[i, "vasc"] = str(float(frame.loc[i, "vasc"]) + 0.002)
        return frame, i + 2, "probabilities sum to 1.002, not 1 (tolerance 0.001)"
    if case == "unknown label":
        frame.loc[i, "label"] = "SCC"
        return frame, i + 2, "unknown label 'SCC'"
    if case == "blank image_id":
        frame.loc[i, "image_id"] = "  "
        return frame, i + 2, "blank image_id"
    if case == "duplicate":
        frame.loc[4, "image_id"] = frame.loc[1, "image_id"]
        return frame, 6, f"image_id '{frame.loc[1, 'image_id']}' in source 'ham' duplicates line 3"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "missing column",
        "nan",
        "blank probability",
        "non-numeric",
        "negative",
        "sum",
        "unknown label",
        "blank image_id",
        "duplicate",
    ],
)
def test_bad_input_is_a_one_line_error_naming_the_row(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame, line, message = make_bad(case)
    path = tmp_path / "pred.csv"
    frame.to_csv(path, index=False)
    assert evaluate(path, tmp_path / "out") == 2
    err = capsys.readouterr().err
    location = f"{path}:{line}: " if line is not None else f"{path}: "
    assert err.count("\n") == 1 and err.startswith("crossderm evaluate: error: "), err
    assert f"{location}{message}" in err, err
    assert not (tmp_path / "out").exists()


def test_the_small_valid_file_passes(tmp_path: Path) -> None:
    path = tmp_path / "pred.csv"
    small_frame().to_csv(path, index=False)
    assert evaluate(path, tmp_path / "out") == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bootstrap", "0"], "--bootstrap must be at least 1"),
        (["--seed", "-1"], "--seed must be non-negative"),
    ],
)
def test_bad_options_and_missing_file(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pred.csv"
    small_frame().to_csv(path, index=False)
    assert main(["evaluate", "--predictions", str(path), "--out", str(tmp_path / "o"), *args]) == 2
    assert message in capsys.readouterr().err
    assert evaluate(tmp_path / "absent.csv", tmp_path / "o") == 2
    assert f"{tmp_path / 'absent.csv'}: no such file" in capsys.readouterr().err


def with_groups(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """The optional columns of the data contract: site (one tiny site), sex and age with blanks, anatom_site."""
    n = len(frame)
    ham = frame["source"] == "ham"
    sites = np.where(ham, rng.choice(["vidir_modern", "rosendahl"], n), rng.choice(["bcn", "msk"], n))
    frame = frame.assign(
        site=sites,
        sex=rng.choice(["male", "female", ""], n, p=[0.47, 0.47, 0.06]),
        age=rng.choice(["25", "40", "55.0", "70", "85", ""], n),
        anatom_site=rng.choice(["torso", "head/neck", ""], n),
    )
    frame.loc[frame.index[:12], "site"] = "clinic_x"  # 12 ham images: too few
    return frame


def test_by_site_and_sex_writes_group_sections_and_tables(
    two_sources: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    _, frame = two_sources
    frame = with_groups(frame, np.random.default_rng(3))
    path = tmp_path / "grouped.csv"
    frame.to_csv(path, index=False)
    assert evaluate(path, tmp_path / "out", "--by", "site", "--by", "sex") == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    markdown = (tmp_path / "out" / "metrics.md").read_text()
    assert list(metrics) == ["sources", "reference_source", "gaps", "bootstrap", "sites", "site_summary", "subgroups",
                             "groups"]
    assert list(metrics["subgroups"]) == ["sex"] and metrics["groups"]["by"] == ["site", "sex"]
    assert list(metrics["sites"]) == ["ham/clinic_x", "ham/rosendahl", "ham/vidir_modern", "isic/bcn", "isic/msk"]
    assert metrics["sites"]["ham/clinic_x"] == {"source": "ham", "site": "clinic_x", "n": 12, "too_few": True}
    rows = frame[(frame["source"] == "isic") & (frame["site"] == "msk")]
    y, pred = rows["label"].map(CLASSES.index).to_numpy(), rows[list(CLASSES)].to_numpy().argmax(axis=1)
    msk = metrics["sites"]["isic/msk"]
    assert msk["accuracy"]["value"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert "## Per site" in markdown and "## Subgroups by sex" in markdown and "age_bin" not in markdown
    assert "| ham/clinic_x | 12 | too few (n = 12) | too few | too few |" in markdown
    f1 = msk["macro_f1"]
    assert f"| isic/msk | {len(rows)} | {f1['value']:.4f} [{f1['ci_low']:.4f}, {f1['ci_high']:.4f}] |" in markdown
    summary = metrics["site_summary"]
    mean = summary["mean_macro_f1"]
    assert f"| mean over 4 sites | | {mean['value']:.4f} [{mean['ci_low']:.4f}, {mean['ci_high']:.4f}] |" in markdown
    assert f"| worst site: {summary['worst_site']['site']} |" in markdown
    assert "| minimum over sites (per resample) |" in markdown
    assert "| isic/missing |" in markdown  # blank sex: its own group
    # the per-source sections do not depend on the groups
    assert evaluate(path, tmp_path / "plain", "--by", "sex") == 0
    plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    assert "sites" not in plain and plain["sources"] == metrics["sources"] and plain["gaps"] == metrics["gaps"]
    assert plain["subgroups"] == metrics["subgroups"]


def test_default_is_per_site_and_input_without_optional_columns_still_works(
    two_sources: tuple[Path, pd.DataFrame], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, frame = two_sources
    grouped = tmp_path / "grouped.csv"
    with_groups(frame, np.random.default_rng(3)).to_csv(grouped, index=False)
    assert evaluate(grouped, tmp_path / "a") == 0
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert "sites" in metrics and "subgroups" not in metrics and metrics["groups"]["by"] == ["site"]
    # no optional column: exactly the per-source metrics.json of before
    assert evaluate(path, tmp_path / "b") == 0
    bare = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert list(bare) == ["sources", "reference_source", "gaps", "bootstrap"]
    assert bare["sources"] == metrics["sources"]
    assert "## Per site" not in (tmp_path / "b" / "metrics.md").read_text()
    capsys.readouterr()
    # asking for a grouping the file has no column for is a one-line error
    assert evaluate(path, tmp_path / "c", "--by", "age_bin") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: --by age_bin needs a 'age' column" in err
    assert not (tmp_path / "c").exists()
    with pytest.raises(SystemExit):
        evaluate(path, tmp_path / "d", "--by", "country")  # argparse: usage error, exit 2
    assert "invalid choice: 'country'" in capsys.readouterr().err


@pytest.mark.parametrize(("age", "message"), [("forty", "age 'forty'"), ("-3", "age '-3'"), ("inf", "age 'inf'")])
def test_bad_age_is_a_one_line_error(
    age: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = small_frame().assign(age=["30", "", "nan", age, "41.5", "7"])
    path = tmp_path / "pred.csv"
    frame.to_csv(path, index=False)
    assert evaluate(path, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}:5: {message} is not a non-negative number" in err, err


def test_train_site_allows_an_image_once_per_training_site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame = small_frame()
    twice = pd.concat([frame.assign(train_site="ham/a"), frame.assign(train_site="ham/b")], ignore_index=True)
    twice["site"] = "c"
    path = tmp_path / "matrix.csv"
    twice.to_csv(path, index=False)
    assert evaluate(path, tmp_path / "ok") == 0
    twice.loc[3, "train_site"] = "ham/b"  # line 5 now has line 11's (train site, source, image)
    twice.to_csv(path, index=False)
    assert evaluate(path, tmp_path / "bad") == 2
    err = capsys.readouterr().err
    image_id = twice.loc[3, "image_id"]
    assert f"{path}:11: image_id '{image_id}' in source 'ham' duplicates line 5 for train_site 'ham/b'" in err
