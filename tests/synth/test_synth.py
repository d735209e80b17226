"""The synthetic generator must mimic the official download layouts exactly and be reproducible."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from crossderm.cli import main
from crossderm.errors import CrossdermError
from crossderm.labels import CLASSES, ISIC2019_COLUMNS
from crossderm.synth import DEFAULT_HAM_LESIONS, DEFAULT_ISIC_LESIONS, paint, plan
from crossderm.synth.generator import generate

HAM_COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"]
META_COLUMNS = ["image", "age_approx", "anatom_site_general", "lesion_id", "sex"]


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _synth_cli(argv: list[str]) -> int:
    """``crossderm synth ARGV`` in-process, through the CLI's own ``main``."""
    return main(["synth", *argv])


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "raw"
    summary = generate(out, ham_lesions=60, isic_lesions=60, seed=0, image_scale=0.5)
    return out, summary


def _read(small: tuple[Path, dict]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    out, _ = small
    ham = pd.read_csv(out / "HAM10000" / "HAM10000_metadata.csv", dtype=str, keep_default_na=False)
    gt = pd.read_csv(out / "ISIC2019" / "ISIC_2019_Training_GroundTruth.csv", dtype=str)
    meta = pd.read_csv(out / "ISIC2019" / "ISIC_2019_Training_Metadata.csv", dtype=str, keep_default_na=False)
    return ham, gt, meta


def test_official_columns_and_line_endings(small: tuple[Path, dict]) -> None:
    out, _ = small
    ham_text = (out / "HAM10000" / "HAM10000_metadata.csv").read_bytes()
    gt_text = (out / "ISIC2019" / "ISIC_2019_Training_GroundTruth.csv").read_bytes()
    meta_text = (out / "ISIC2019" / "ISIC_2019_Training_Metadata.csv").read_bytes()
    assert b"\r" not in ham_text and ham_text.endswith(b"\n")
    for text in (gt_text, meta_text):
        assert text.count(b"\r\n") == text.count(b"\n") and text.endswith(b"\r\n")
    ham, gt, meta = _read(small)
    assert list(ham.columns) == HAM_COLUMNS
    assert list(gt.columns) == ["image", *ISIC2019_COLUMNS]
    assert list(meta.columns) == META_COLUMNS
    assert set(ham.dx) == set(CLASSES)
    assert set(ham.dataset) <= {"vidir_molemax", "vidir_modern", "rosendahl", "vienna_dias"}
    assert ham.age.str.fullmatch(r"(\d+\.0)?").all()
    assert ham.image_id.str.fullmatch(r"ISIC_\d{7}").all() and (ham.image_id >= "ISIC_0024306").all()
    assert ham.lesion_id.str.fullmatch(r"HAM_\d{7}").all()
    assert meta.age_approx.str.fullmatch(r"(\d+)?").all()
    assert list(gt.image) == sorted(gt.image) and list(meta.image) == list(gt.image)


def test_ground_truth_one_hot_and_images_present(small: tuple[Path, dict]) -> None:
    out, _ = small
    _, gt, _ = _read(small)
    values = gt[list(ISIC2019_COLUMNS)]
    assert values.isin(["0.0", "1.0"]).all().all()
    assert ((values == "1.0").sum(axis=1) == 1).all()
    assert (values["UNK"] == "0.0").all()
    folder = out / "ISIC2019" / "ISIC_2019_Training_Input"
    assert sorted(p.stem for p in folder.glob("*.jpg")) == list(gt.image)


def test_ham_is_inside_isic_with_same_bytes_and_lesions(small: tuple[Path, dict]) -> None:
    out, summary = small
    ham, gt, meta = _read(small)
    parts = [out / "HAM10000" / f"HAM10000_images_part_{k}" for k in (1, 2)]
    files = {p.stem: p for part in parts for p in part.glob("*.jpg")}
    assert sorted(files) == sorted(ham.image_id)
    assert all(len(list(part.glob("*.jpg"))) > 0.4 * len(ham) for part in parts)
    isic_dir = out / "ISIC2019" / "ISIC_2019_Training_Input"
    for image_id, path in files.items():
        assert path.read_bytes() == (isic_dir / f"{image_id}.jpg").read_bytes()
    lesion_of = dict(zip(meta.image, meta.lesion_id, strict=True))
    assert all(lesion_of[i] == lesion for i, lesion in zip(ham.image_id, ham.lesion_id, strict=True))
    label_of = gt.set_index("image")[list(ISIC2019_COLUMNS)].idxmax(axis=1)
    expected = {"mel": {"MEL"}, "nv": {"NV"}, "bcc": {"BCC"}, "bkl": {"BKL"}, "df": {"DF"}, "vasc": {"VASC"},
                "akiec": {"AK", "SCC"}}
    assert all(label_of[i] in expected[dx] for i, dx in zip(ham.image_id, ham.dx, strict=True))
    assert summary["isic_rows_from_ham"] == len(ham) == summary["ham_images"]
    assert summary["isic_images"] == len(gt)


def test_sites_ids_and_grouping(small: tuple[Path, dict]) -> None:
    ham, gt, meta = _read(small)
    other = meta[~meta.image.isin(ham.image_id)]
    bcn = other[other.lesion_id.str.startswith("BCN_")]
    msk = other[~other.lesion_id.str.startswith("BCN_")]
    assert bcn.lesion_id.str.fullmatch(r"BCN_\d{7}").all() and (bcn.image > "ISIC_0053000").all()
    assert msk.lesion_id.str.fullmatch(r"(MSK4_\d{7})?").all() and (msk.image < "ISIC_0024306").all()
    assert msk.image.str.fullmatch(r"ISIC_\d{7}(_downsampled)?").all()
    assert msk.image.str.endswith("_downsampled").any() and (msk.lesion_id == "").any()
    assert len(ham) / ham.lesion_id.nunique() > 1.1 and len(bcn) / bcn.lesion_id.nunique() > 1.3
    label = gt.set_index("image")[list(ISIC2019_COLUMNS)].idxmax(axis=1)
    for frame in (meta[meta.image.isin(ham.image_id)], bcn):
        assert label[frame.image].groupby(frame.lesion_id.values).nunique().max() == 1
    assert {"MEL", "NV", "BCC", "BKL", "DF", "VASC"} <= set(label[other.image])


def test_image_sizes_follow_the_sites(small: tuple[Path, dict]) -> None:
    out, _ = small
    ham, _, meta = _read(small)
    folder = out / "ISIC2019" / "ISIC_2019_Training_Input"
    with Image.open(folder / f"{ham.image_id[0]}.jpg") as image:
        assert image.size == (80, 60) and image.mode == "RGB"
    bcn = meta.image[meta.lesion_id.str.startswith("BCN_")].iloc[0]
    with Image.open(folder / f"{bcn}.jpg") as image:
        assert image.size == (96, 96)
    # MSK-range images: (224, 168) x 0.5; without a lesion id the ISIC archive camera (192, 144) x 0.5; halved
    # again for a _downsampled id
    for _, row in meta[meta.image.str[5:12].astype(int) < 24306].iterrows():  # below the HAM10000 id range
        size = (112, 84) if row.lesion_id else (96, 72)
        if row.image.endswith("_downsampled"):
            size = (size[0] // 2, size[1] // 2)
        with Image.open(folder / f"{row.image}.jpg") as image:
            assert image.size == size, row.image


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    kwargs = {"ham_lesions": 14, "isic_lesions": 20, "image_scale": 0.5}
    generate(tmp_path / "a", seed=5, **kwargs)
    generate(tmp_path / "b", seed=5, **kwargs)
    generate(tmp_path / "c", seed=6, **kwargs)
    a, b, c = (_tree_hashes(tmp_path / name) for name in "abc")
    assert a == b
    assert a != c


def test_class_floor_and_invalid_sizes(tmp_path: Path) -> None:
    counts = plan.class_counts(plan.PRIORS["ham"], 740, 6)
    assert sum(counts.values()) == 740 and min(counts.values()) >= 6 and counts["nv"] > 450
    assert min(plan.class_counts(plan.PRIORS["msk"], 20, 6).values()) == 2
    with pytest.raises(CrossdermError):
        generate(tmp_path / "x", ham_lesions=3)
    assert not (tmp_path / "x").exists()


def test_every_planned_style_has_a_camera() -> None:
    """plan names each lesion's camera (HAM10000 sub-source or site), paint must know how it photographs."""
    assert set(paint.STYLES) == {*plan.HAM_DATASETS, "bcn", "msk", plan.ARCHIVE_STYLE}


def test_cli_without_size_options_writes_the_default_lesions(tmp_path: Path) -> None:
    """Counted from the files (tiny images keep it cheap): a lesion with a blank id is one MSK image."""
    out = tmp_path / "raw"
    assert _synth_cli(["--out", str(out), "--image-scale", "0.25"]) == 0
    ham, _, meta = _read((out, {}))
    assert ham.lesion_id.nunique() == DEFAULT_HAM_LESIONS
    other = meta[~meta.image.isin(ham.image_id)]
    assert other.lesion_id[other.lesion_id != ""].nunique() + (other.lesion_id == "").sum() == DEFAULT_ISIC_LESIONS
    assert 900 < len(ham) < 1100 and 900 < len(other) < 1100  # "~1,000 + ~1,000 images", as the help says


def test_cli_writes_and_refuses_to_clobber(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "raw"
    args = ["--out", str(out), "--ham-lesions", "14", "--isic-lesions", "14", "--image-scale", "0.5"]
    assert _synth_cli(args) == 0
    assert "HAM10000" in capsys.readouterr().out
    before = _tree_hashes(out)
    assert _synth_cli([*args, "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists and is not empty (pass --overwrite to replace it)" in err
    assert _tree_hashes(out) == before
    assert _synth_cli([*args, "--seed", "1", "--overwrite"]) == 0
    assert _tree_hashes(out) != before
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]


def _colour_histogram(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB").resize((32, 32)), np.float32)[8:24, 8:24].reshape(-1, 3) / 255
    return np.concatenate([np.histogram(pixels[:, k], bins=8, range=(0, 1))[0] for k in range(3)]) / len(pixels)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_classes_are_learnable_and_sites_shift(tmp_path: Path) -> None:
    """Centre colour histograms + logistic regression, 3-fold lesion-grouped CV: well above chance within
    HAM10000, and on the ISIC-only images clearly better once those sites are in training than with
    HAM10000 alone (same test images, so the gap is the site shift)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import GroupKFold

    out = tmp_path / "raw"
    generate(out, ham_lesions=200, isic_lesions=200, seed=3, image_scale=0.5)
    gt = pd.read_csv(out / "ISIC2019" / "ISIC_2019_Training_GroundTruth.csv")
    meta = pd.read_csv(out / "ISIC2019" / "ISIC_2019_Training_Metadata.csv", dtype=str, keep_default_na=False)
    y = gt[list(ISIC2019_COLUMNS)].to_numpy().argmax(axis=1)
    y[y == ISIC2019_COLUMNS.index("SCC")] = ISIC2019_COLUMNS.index("AK")
    x = np.stack([_colour_histogram(out / "ISIC2019" / "ISIC_2019_Training_Input" / f"{i}.jpg") for i in gt.image])
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    groups = np.where(meta.lesion_id == "", meta.image, meta.lesion_id)
    ham = meta.lesion_id.str.startswith("HAM_").to_numpy()

    def predict(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        model = LogisticRegression(C=0.1, max_iter=3000, class_weight="balanced").fit(x[train], y[train])
        return model.predict(x[test])

    def cross_validated(rows: np.ndarray, always: np.ndarray) -> float:
        """Balanced accuracy on ``rows``, each fold predicted by a model of the other folds plus ``always``."""
        index = np.flatnonzero(rows)
        predicted = np.empty(len(index), dtype=y.dtype)
        for fit_part, test_part in GroupKFold(3).split(index, groups=groups[index]):
            train = always.copy()
            train[index[fit_part]] = True
            predicted[test_part] = predict(train, index[test_part])
        return balanced_accuracy_score(y[index], predicted)

    in_site = cross_validated(ham, np.zeros_like(ham))
    across = balanced_accuracy_score(y[~ham], predict(ham, np.flatnonzero(~ham)))
    joint = cross_validated(~ham, ham)
    assert in_site > 3 / len(CLASSES)
    assert joint > across + 0.05
