"""The domain-generalisation methods: illuminant augmentation, metadata fusion, held-out classes, OOD scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

from crossderm.cli import main
from crossderm.colour import illuminants
from crossderm.datafolder import load_dataset
from crossderm.errors import CrossdermError
from crossderm.evaluate.ood import auroc
from crossderm.models.ood import MahalanobisStatistics, energy_score, msp_score
from crossderm.patient import METADATA_FEATURES, MetadataError, encode_metadata, missing_metadata
from crossderm.train.augment import AugmentConfig, augment_batch, relight
from crossderm.train.config import load_config
from crossderm.train.fold import fold_data

FAST = ["model=test_efficientnet", "epochs=1", "batch_size=32", "eval_batch_size=128", "lr=3e-3",
        "channels_last=false"]


def test_relight_gives_each_image_the_target_illuminant() -> None:
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.uniform(0.2, 0.6, size=(3, 3, 8, 8)).astype(np.float32))
    targets = torch.tensor([[0.7, 0.5, 0.5], [0.5, 0.7, 0.5], [0.5, 0.5, 0.7]])
    targets = targets / targets.norm(dim=1, keepdim=True)
    relit = relight(images, targets)
    got = illuminants((relit.permute(0, 2, 3, 1).numpy() * 255).astype(np.float64))
    np.testing.assert_allclose(got, targets.numpy(), atol=2e-3)


def test_illuminant_augmentation_off_draws_nothing_more() -> None:
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    pool = torch.tensor([[0.8, 0.5, 0.3]])
    plain = augment_batch(images, AugmentConfig(), torch.Generator().manual_seed(2), pool)
    same = augment_batch(images, AugmentConfig(illuminant=0.0), torch.Generator().manual_seed(2))
    assert torch.equal(plain, same)
    relit = augment_batch(images, AugmentConfig(illuminant=1.0), torch.Generator().manual_seed(2), pool)
    assert not torch.allclose(relit, plain)
    with pytest.raises(ValueError, match="needs the training images' illuminants"):
        augment_batch(images, AugmentConfig(illuminant=0.5), torch.Generator().manual_seed(2))


def test_metadata_encoding_one_hot_with_missing_indicators() -> None:
    encoded = encode_metadata(["60", ""], ["female", ""], ["torso", ""])
    names = list(METADATA_FEATURES)
    assert encoded.shape == (2, 12)
    assert encoded[0, names.index("age")] == pytest.approx(0.6) and encoded[0, names.index("sex_female")] == 1
    assert encoded[0, names.index("anatom_site_torso")] == 1 and encoded[0].sum() == pytest.approx(2.6)
    np.testing.assert_array_equal(encoded[1], missing_metadata(1)[0])
    assert encoded[1, [names.index(n) for n in ("age_missing", "sex_missing", "anatom_site_missing")]].sum() == 3
    for bad in (["x"], ["200"]):
        with pytest.raises(MetadataError, match="age"):
            encode_metadata(bad, [""], [""])
    with pytest.raises(MetadataError, match="anatom_site 'elbow'"):
        encode_metadata([""], [""], ["elbow"])


def test_held_out_classes_are_tested_but_never_trained_on(synth_prepared: Path) -> None:
    manifest = load_dataset(synth_prepared).manifest
    config = load_config("demo_b_joint", [*FAST, "held_out_classes=[df, vasc]"])
    data = fold_data(manifest, config, 0)
    assert not ({"df", "vasc"} & (set(data.train["label"]) | set(data.val["label"])))
    assert {"df", "vasc"} <= set(data.test["label"])
    with pytest.raises(CrossdermError, match="held_out_classes"):
        load_config("demo_b_joint", ["held_out_classes=[unk]"])


def test_mahalanobis_statistics_equal_a_direct_computation() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 300)
    features = rng.normal(size=(300, 5)) + labels[:, None] * 2.0
    stats = MahalanobisStatistics.fit(features, labels)
    means = np.stack([features[labels == c].mean(0) for c in range(3)])
    precision = LedoitWolf(assume_centered=True).fit(features - means[labels]).precision_
    np.testing.assert_allclose(stats.precision, precision)
    probe = rng.normal(size=(4, 5)) * 3
    direct = np.array([min((x - m) @ precision @ (x - m) for m in means) for x in probe])
    np.testing.assert_allclose(stats.distance(probe), direct, rtol=1e-10)
    calibrated = stats.calibrated(features[:100])
    assert calibrated.threshold == pytest.approx(np.quantile(stats.distance(features[:100]), 0.95))
    assert np.mean(calibrated.score(features[:100]) > 1) == pytest.approx(0.05, abs=0.011)
    probs = np.array([[0.7, 0.2, 0.1], [0.34, 0.33, 0.33]])
    np.testing.assert_allclose(msp_score(probs), [0.3, 0.66])
    logits = np.log(probs)
    np.testing.assert_allclose(energy_score(logits), -np.log(probs.sum(1)), atol=1e-12)


def test_ood_auroc_equals_scikit_learn() -> None:
    rng = np.random.default_rng(4)
    is_ood = rng.random(200) < 0.3
    scores = rng.normal(size=200) + is_ood
    result = auroc(scores, is_ood, 300, np.random.default_rng(0))
    assert result["value"] == pytest.approx(roc_auc_score(is_ood, scores))
    assert result["ci_low"] < result["value"] < result["ci_high"]
    assert auroc(scores, np.zeros(200, dtype=bool), 10, np.random.default_rng(0))["value"] is None


def test_metadata_model_end_to_end(synth_prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "meta"
    assert main(["cv", "--config", "demo_b_joint", "--data", str(synth_prepared), "--out", str(out), "--fold", "0",
                 *[f"--set={o}" for o in [*FAST, "metadata=true", "tta=1"]]]) == 0
    card = json.loads((out / "fold_0" / "model.json").read_text())
    assert card["metadata"] is True and card["ood_statistics"] == "ood.safetensors"
    from crossderm.predict.ensemble import Ensemble

    ensemble = Ensemble(out, device="cpu")
    cache = load_dataset(synth_prepared).open_cache()
    pixels = np.ascontiguousarray(cache[:3])
    with pytest.raises(CrossdermError, match="uses patient metadata"):
        ensemble.predict(pixels, views=1)
    young = ensemble.predict(pixels, 1, encode_metadata(["20"] * 3, ["male"] * 3, ["torso"] * 3))
    old = ensemble.predict(pixels, 1, encode_metadata(["85"] * 3, ["female"] * 3, ["head/neck"] * 3))
    np.testing.assert_allclose(young.sum(1), 1, atol=1e-6)
    assert not np.allclose(young, old)  # the metadata reaches the prediction
    # crossderm predict: metadata from a CSV list's columns; without them an error row, unless imputed
    images = sorted(Path(p) for p in load_dataset(synth_prepared).manifest["path"][:3])
    listing = tmp_path / "list.csv"
    pd.DataFrame({"path": [str(p) for p in images], "age": ["60", "", "30"], "sex": ["male", "", "female"],
                  "anatom_site": ["torso", "", "head/neck"]}).to_csv(listing, index=False)
    pred = tmp_path / "pred.csv"
    assert main(["predict", "--model", str(out), str(listing), "--out", str(pred)]) == 0
    assert (pd.read_csv(pred)["status"] == "ok").all()
    assert main(["predict", "--model", str(out), *map(str, images), "--out", str(pred)]) == 1
    assert pd.read_csv(pred, keep_default_na=False)["error"].str.startswith("no metadata for this image").all()
    assert main(["predict", "--model", str(out), *map(str, images), "--out", str(pred), "--impute-metadata"]) == 0
    predictions = pd.read_csv(out / "fold_0" / "predictions.csv")
    assert {"ood_msp", "ood_energy", "ood_mahalanobis"} <= set(predictions.columns)
    validation = pd.read_csv(out / "fold_0" / "val_predictions.csv")
    above = int((validation["ood_mahalanobis"] > 1 + 1e-9).sum())  # the threshold: validation's 95th percentile
    assert above == int(np.ceil(0.05 * (len(validation) - 1)))
