"""Per-site and subgroup metrics, the site summary and the site matrix (crossderm.evaluate.groups)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, roc_auc_score

from crossderm.defaults import MIN_GROUP_IMAGES
from crossderm.errors import CrossdermError
from crossderm.evaluate.groups import age_bins, render_group_markdown, site_matrix
from crossderm.evaluate.predictions import compute_metrics, source_rng
from crossderm.labels import CLASSES

pytestmark = pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
K = len(CLASSES)
B = 300
PRIORS = np.array([3, 5, 11, 2, 11, 60, 8], dtype=float)
# (source, site) -> (images, strength of the true-class logit): distinct skill per site, one site too small
SITES = {
    ("ham", "vidir_modern"): (160, 2.4),
    ("ham", "rosendahl"): (140, 1.2),
    ("ham", "tiny"): (MIN_GROUP_IMAGES - 1, 1.5),
    ("isic", "bcn"): (150, 0.9),
    ("isic", "msk"): (120, 1.8),
    ("isic", "rosendahl"): (40, 1.0),  # the same site name in another source: another site
}


def make_table(seed: int = 0, sites: dict = SITES, blank_site: int = 0) -> pd.DataFrame:
    """A validated predictions table (as load_predictions returns) with site, sex, age and anatom_site."""
    rng = np.random.default_rng(seed)
    frames = []
    for (source, site), (n, strength) in sites.items():
        y = rng.choice(K, size=n, p=PRIORS / PRIORS.sum())
        logits = rng.normal(size=(n, K))
        logits[np.arange(n), y] += strength
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        frame = pd.DataFrame(probs, columns=list(CLASSES))
        frame.insert(0, "image_id", [f"{source}_{site}_{i:04d}" for i in range(n)])
        frame.insert(1, "source", source)
        frame.insert(2, "label", [CLASSES[c] for c in y])
        frame["site"] = site
        frame["sex"] = rng.choice(["male", "female", ""], size=n, p=[0.45, 0.45, 0.1])
        frame["age"] = rng.choice([20.0, 35.0, 50.0, 65.0, 80.0, np.nan], size=n)
        frame["anatom_site"] = rng.choice(["torso", "head/neck", ""], size=n)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    table.loc[table.index[:blank_site], "site"] = ""
    return table


def sk_summary(rows: pd.DataFrame) -> dict[str, float]:
    y = rows["label"].map(CLASSES.index).to_numpy()
    scores = rows[list(CLASSES)].to_numpy()
    pred = scores.argmax(axis=1)
    present = np.unique(y)
    aucs = [roc_auc_score(y == c, scores[:, c]) for c in present if 0 < (y == c).sum() < len(y)]
    return {
        "macro_f1": f1_score(y, pred, labels=present, average="macro", zero_division=0),
        "accuracy": accuracy_score(y, pred),
        "balanced_accuracy": balanced_accuracy_score(y, pred),
        "macro_auc": float(np.mean(aucs)),
        "confusion_matrix": confusion_matrix(y, pred, labels=range(K)).tolist(),
    }


def numpy_macro_f1_draws(rows: pd.DataFrame, rng: np.random.Generator, n_resamples: int) -> np.ndarray:
    """Bootstrap macro-F1 of one cell, independently of crossderm.evaluate.metrics: sort by image_id, one
    multinomial over the (true, pred) cells (the first draws of the cell's generator), then a loop."""
    rows = rows.sort_values("image_id")
    y = rows["label"].map(CLASSES.index).to_numpy()
    pred = rows[list(CLASSES)].to_numpy().argmax(axis=1)
    cells, counts = np.unique(np.column_stack([y, pred]), axis=0, return_counts=True)
    draws = rng.multinomial(len(y), counts / len(y), size=n_resamples)
    present = np.bincount(y, minlength=K) > 0
    out = np.empty(n_resamples)
    for b in range(n_resamples):
        cm = np.zeros((K, K))
        np.add.at(cm, (cells[:, 0], cells[:, 1]), draws[b])
        tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
        f1 = np.where(support + predicted > 0, 2 * tp / np.maximum(support + predicted, 1), 0.0)
        out[b] = f1[present].mean()
    return out


def rows_of(table: pd.DataFrame, source: str, site: str) -> pd.DataFrame:
    return table[(table["source"] == source) & (table["site"] == site)]


def test_site_cells_equal_sklearn_and_too_few_cells_have_no_values() -> None:
    table = make_table()
    metrics = compute_metrics(table, B, 0, by=("site",))
    assert set(metrics["sites"]) == {f"{source}/{site}" for source, site in SITES}
    for (source, site), (n, _) in SITES.items():
        cell = metrics["sites"][f"{source}/{site}"]
        assert (cell["source"], cell["site"], cell["n"]) == (source, site, n)
        if n < MIN_GROUP_IMAGES:
            assert cell == {"source": source, "site": site, "n": n, "too_few": True}
            continue
        expected = sk_summary(rows_of(table, source, site))
        for metric in ("macro_f1", "accuracy", "balanced_accuracy", "macro_auc"):
            assert cell[metric]["value"] == pytest.approx(expected[metric], abs=1e-12), (site, metric)
        assert cell["confusion_matrix"] == expected["confusion_matrix"]
        assert cell["macro_f1"]["ci_low"] < cell["macro_f1"]["value"] < cell["macro_f1"]["ci_high"]
        assert cell["macro_auc"]["ci_low"] is None  # AUC: point value only in group cells
    # isic/rosendahl is not ham/rosendahl
    assert metrics["sites"]["isic/rosendahl"]["n"] == 40 and metrics["sites"]["ham/rosendahl"]["n"] == 140
    # the per-source sections are exactly those without groups
    plain = compute_metrics(table, B, 0, by=())
    assert {k: metrics[k] for k in plain} == plain and "sites" not in plain and "groups" not in plain
    assert metrics["groups"]["min_images"] == MIN_GROUP_IMAGES and metrics["groups"]["by"] == ["site"]


def test_site_summary_against_an_independent_numpy_bootstrap() -> None:
    table = make_table()
    summary = compute_metrics(table, B, 3, by=("site",))["site_summary"]
    evaluable = sorted(f"{s}/{t}" for (s, t), (n, _) in SITES.items() if n >= MIN_GROUP_IMAGES)
    assert summary["sites"] == evaluable and summary["too_few"] == ["ham/tiny"]
    points = {key: sk_summary(rows_of(table, *key.split("/")))["macro_f1"] for key in evaluable}
    draws = np.column_stack(
        [numpy_macro_f1_draws(rows_of(table, *key.split("/")), source_rng(3, key), B) for key in evaluable]
    )
    mean, minimum = draws.mean(axis=1), draws.min(axis=1)
    assert summary["mean_macro_f1"]["value"] == pytest.approx(np.mean(list(points.values())), abs=1e-12)
    assert [summary["mean_macro_f1"][k] for k in ("ci_low", "ci_high")] == pytest.approx(
        np.percentile(mean, [2.5, 97.5]), abs=1e-12
    )
    worst = min(points, key=points.get)
    assert worst == "isic/bcn"  # the weakest classifier of the fixture
    assert summary["worst_site"]["site"] == worst
    column = draws[:, evaluable.index(worst)]
    assert summary["worst_site"]["macro_f1"]["value"] == pytest.approx(points[worst], abs=1e-12)
    assert [summary["worst_site"]["macro_f1"][k] for k in ("ci_low", "ci_high")] == pytest.approx(
        np.percentile(column, [2.5, 97.5]), abs=1e-12
    )
    assert summary["min_macro_f1"]["value"] == pytest.approx(points[worst], abs=1e-12)
    assert [summary["min_macro_f1"][k] for k in ("ci_low", "ci_high")] == pytest.approx(
        np.percentile(minimum, [2.5, 97.5]), abs=1e-12
    )
    # the per-resample minimum lies at or below the worst site's own resamples
    assert summary["min_macro_f1"]["ci_low"] <= summary["worst_site"]["macro_f1"]["ci_low"]


def test_one_evaluable_site_has_no_summary() -> None:
    sites = {("ham", "a"): (80, 2.0), ("ham", "b"): (10, 2.0)}
    metrics = compute_metrics(make_table(sites=sites), B, 0)
    assert metrics["site_summary"] is None and metrics["sites"]["ham/b"]["too_few"]
    assert "Fewer than two sites with enough images" in "\n".join(render_group_markdown(metrics))


def test_missing_values_are_their_own_group() -> None:
    table = make_table(blank_site=35)
    metrics = compute_metrics(table, B, 0, by=("site", "sex", "age_bin", "anatom_site"))
    missing = metrics["sites"]["ham/missing"]
    assert missing["n"] == 35 and missing["site"] == "missing" and "too_few" not in missing
    assert sum(cell["n"] for cell in metrics["sites"].values()) == len(table)
    sex = metrics["subgroups"]["sex"]
    for source in ("ham", "isic"):
        rows = table[table["source"] == source]
        own = [key for key in sex if key.startswith(f"{source}/")]
        assert own == [f"{source}/{v}" for v in ("female", "male", "missing")]
        blank = rows[rows["sex"] == ""]
        assert sex[f"{source}/missing"]["n"] == len(blank)
        assert sex[f"{source}/missing"]["macro_f1"]["value"] == pytest.approx(sk_summary(blank)["macro_f1"], abs=1e-12)
        assert sex[f"{source}/female"]["sex"] == "female" and sex[f"{source}/female"]["source"] == source
        assert sum(sex[f"{source}/{v}"]["n"] for v in ("female", "male", "missing")) == len(rows)
    ages = metrics["subgroups"]["age_bin"]
    assert [k for k in ages if k.startswith("ham/")] == [
        f"ham/{b}" for b in ("<30", "30-44", "45-59", "60-74", "75+", "missing")
    ]
    assert ages["ham/missing"]["n"] == int(table.loc[table["source"] == "ham", "age"].isna().sum())
    assert metrics["subgroups"]["anatom_site"]["isic/missing"]["anatom_site"] == "missing"
    assert list(metrics["subgroups"]) == ["sex", "age_bin", "anatom_site"]


def test_small_subgroups_are_too_few() -> None:
    table = make_table()
    table.loc[table.index[:5], "sex"] = "other"  # 5 ham images
    cells = compute_metrics(table, B, 0, by=("sex",))["subgroups"]["sex"]
    assert cells["ham/other"] == {"source": "ham", "sex": "other", "n": 5, "too_few": True}
    markdown = "\n".join(render_group_markdown({"subgroups": {"sex": cells}, "groups": {"min_images": 30}}))
    assert "| ham/other | 5 | too few (n = 5) | too few | too few |" in markdown


def test_cells_ignore_row_order_and_other_cells() -> None:
    table = make_table()
    by = ("site", "sex", "age_bin")
    first = compute_metrics(table, B, 0, by=by)
    assert compute_metrics(table.sample(frac=1, random_state=2), B, 0, by=by) == first
    # a cell's numbers depend only on its rows: drop another site and another source
    fewer = table[(table["site"] != "rosendahl") & ~((table["source"] == "isic") & (table["site"] == "msk"))]
    second = compute_metrics(fewer, B, 0, by=by)
    assert second["sites"]["ham/vidir_modern"] == first["sites"]["ham/vidir_modern"]
    assert second["sites"]["isic/bcn"] == first["sites"]["isic/bcn"]
    # every cell has its own generator: identical rows under two site names give different CIs
    twin = table[(table["source"] == "ham") & (table["site"] == "vidir_modern")]
    doubled = pd.concat([twin, twin.assign(source="copy")], ignore_index=True)
    sites = compute_metrics(doubled, B, 0, by=("site",))["sites"]
    a, b = sites["ham/vidir_modern"]["macro_f1"], sites["copy/vidir_modern"]["macro_f1"]
    assert a["value"] == b["value"] and a["ci_low"] != b["ci_low"]


def test_age_bins_at_the_edges() -> None:
    ages = [0, 29, 29.9, 30, 44, 44.9, 45, 59.5, 60, 74, 75, 101, np.nan, "", "55"]
    expected = ["<30", "<30", "<30", "30-44", "30-44", "30-44", "45-59", "45-59", "60-74", "60-74", "75+", "75+",
                "missing", "missing", "45-59"]
    assert list(age_bins(ages)) == expected


def test_unknown_grouping_is_refused() -> None:
    with pytest.raises(CrossdermError, match="unknown grouping 'country'"):
        compute_metrics(make_table(), B, 0, by=("country",))


def site_matrix_table(seed: int = 0) -> pd.DataFrame:
    """Each image predicted once by every site's model but its own one, with per-pair skill."""
    table = make_table(seed)
    keys = sorted({f"{s}/{t}" for s, t in zip(table["source"], table["site"], strict=True)})
    rng = np.random.default_rng(seed + 1)
    frames = []
    for train in keys:
        rows = table[(table["source"] + "/" + table["site"]) != train].copy()
        y = rows["label"].map(CLASSES.index).to_numpy()
        logits = rng.normal(size=(len(rows), K))
        logits[np.arange(len(rows)), y] += 1.0 + keys.index(train) * 0.2
        rows[list(CLASSES)] = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        frames.append(rows.assign(train_site=train))
    return pd.concat(frames, ignore_index=True)


def test_site_matrix_cells_equal_sklearn() -> None:
    table = site_matrix_table()
    matrix = site_matrix(table, B, 0)
    keys = sorted(f"{s}/{t}" for s, t in SITES)
    assert list(matrix) == keys
    for train, row in matrix.items():
        assert list(row) == [k for k in keys if k != train]  # each image only by the models that never saw it
        for test, cell in row.items():
            source, site = test.split("/")
            rows = table[(table["train_site"] == train) & (table["source"] == source) & (table["site"] == site)]
            assert (cell["train_site"], cell["source"], cell["site"], cell["n"]) == (train, source, site, len(rows))
            if len(rows) < MIN_GROUP_IMAGES:
                assert cell == {"train_site": train, "source": source, "site": site, "n": len(rows), "too_few": True}
            else:
                assert cell["macro_f1"]["value"] == pytest.approx(sk_summary(rows)["macro_f1"], abs=1e-12)
                draws = numpy_macro_f1_draws(rows, source_rng(0, f"{train} -> {test}"), B)
                assert [cell["macro_f1"][k] for k in ("ci_low", "ci_high")] == pytest.approx(
                    np.percentile(draws, [2.5, 97.5]), abs=1e-12
                )
    assert site_matrix(table.sample(frac=1, random_state=0), B, 0) == matrix
    markdown = "\n".join(render_group_markdown({"site_matrix": matrix}))
    assert "## Site matrix: macro-F1 (rows = training site, columns = test site)" in markdown
    assert "| train \\ test | " + " | ".join(keys) + " |" in markdown
    assert "| ham/bcn" not in markdown and "| ham/rosendahl | " in markdown and "too few (n = 29)" in markdown
    with pytest.raises(CrossdermError, match="needs column"):
        site_matrix(table.drop(columns="train_site"), B, 0)
