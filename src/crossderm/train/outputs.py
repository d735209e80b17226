"""What a trained fold writes: its predictions (with out-of-distribution scores), OOD statistics, model card.

Run on rank 0 after training, from the best epoch's weights. The inner-validation images are predicted the same
way into ``val_predictions.csv``: temperature scaling and the OOD threshold are fitted on them, never on the
test fold. The Mahalanobis statistics are fitted on the fold's own training images (one view, no augmentation).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from safetensors.torch import load_file

from crossderm.datafolder import METADATA_COLUMNS
from crossderm.fsutil import atomic_write_text, sha256_file
from crossderm.labels import CLASSES, label_indices
from crossderm.models.card import ModelCard, write_card
from crossderm.models.factory import normalisation
from crossderm.models.ood import OOD_FILE, MahalanobisStatistics, ood_scores
from crossderm.models.tta import predict_batches
from crossderm.runfolder import FoldFolder
from crossderm.train.fold import FoldSetup
from crossderm.train.loader import CacheBatches


def _prediction_table(setup: FoldSetup, frame: pd.DataFrame, batches: CacheBatches,
                      statistics: MahalanobisStatistics | None) -> tuple[pd.DataFrame, np.ndarray]:
    """Probabilities and OOD scores of ``frame``'s images (its metadata columns travel along for per-site
    evaluation), and their identity-view features."""
    out = predict_batches(setup.model, batches.batches(), views=setup.config.tta, bf16=setup.runtime.bf16,
                          outputs=True)
    table = frame[["image_id", "source", "label"]].copy()
    for index, name in enumerate(CLASSES):
        table[name] = out.probs[:, index].astype(np.float64) if len(frame) else []
    table["fold"] = setup.fold
    if setup.config.protocol == "site-matrix":
        table["train_site"] = setup.data.job.site
    for column in METADATA_COLUMNS:
        table[column] = frame[column].to_numpy()
    if len(frame):
        for column, values in ood_scores(out.probs, out.logits, out.features, statistics).items():
            table[column] = values
    return table, out.features


def fit_ood_statistics(setup: FoldSetup) -> MahalanobisStatistics:
    """Class means and shared precision of the training images' pre-logit features (one view, no augmentation)."""
    batches = setup.train_batches.rebatched(setup.config.eval_batch_size)
    out = predict_batches(setup.model, batches.batches(), views=1, bf16=setup.runtime.bf16, outputs=True)
    return MahalanobisStatistics.fit(out.features, label_indices(setup.data.train["label"]))


def predict_fold(setup: FoldSetup, folder: FoldFolder, state: dict[str, Any]) -> pd.DataFrame:
    """Test-fold predictions from the best epoch's weights, with the configured TTA views (rank 0 only)."""
    if not setup.runtime.is_main:
        return setup.data.test.iloc[:0]
    setup.model.load_state_dict(load_file(folder.best_weights, device=str(setup.runtime.device)))
    statistics = fit_ood_statistics(setup)
    _, val_features = _prediction_table(setup, setup.data.val, setup.val_tta_batches, None)
    statistics = statistics.calibrated(val_features)
    statistics.save(folder.path / OOD_FILE)
    val, _ = _prediction_table(setup, setup.data.val, setup.val_tta_batches, statistics)
    atomic_write_text(folder.val_predictions, val.to_csv(index=False))
    mean, std = normalisation(setup.model)
    write_card(folder.model_card, ModelCard(
        experiment=setup.config.name, fold=setup.fold, model=setup.config.model, classes=list(CLASSES),
        image_size=setup.image_size, mean=list(mean), std=list(std), tta=setup.config.tta,
        parameters=setup.parameters, weights=folder.best_weights.name, sha256=sha256_file(folder.best_weights),
        best_epoch=state["best_epoch"], val_score=state["best_score"], color_constancy=setup.config.color_constancy,
        metadata=setup.config.metadata, ood_statistics=OOD_FILE, ood_sha256=sha256_file(folder.path / OOD_FILE),
        held_out_classes=list(setup.config.held_out_classes),
    ))
    if len(setup.data.external):
        external, _ = _prediction_table(setup, setup.data.external, setup.external_batches, statistics)
        atomic_write_text(folder.external_predictions, external.to_csv(index=False))
    return _prediction_table(setup, setup.data.test, setup.test_batches, statistics)[0]
