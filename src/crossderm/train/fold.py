"""One cross-validation fold: split, build, train (best epoch on inner validation), predict the test fold.

:func:`setup_fold` builds everything a fold needs, :func:`train_fold` runs the epochs with a checkpoint after
each, :func:`predict_fold` predicts the test images of every test source with TTA from the best epoch and
writes the model card. RNG streams are re-seeded from ``(seed, fold, epoch)`` at each epoch start.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from timm.optim import param_groups_weight_decay
from torch import nn
from tqdm import tqdm

from crossderm.errors import CrossdermError
from crossderm.fsutil import atomic_write_text, sha256_file
from crossderm.labels import CLASSES, label_indices
from crossderm.models.card import ModelCard, write_card
from crossderm.models.factory import count_parameters, create_model, normalisation
from crossderm.models.preprocess import Normalise
from crossderm.models.tta import predict_batches
from crossderm.runfolder import FoldFolder
from crossderm.runtime import Runtime, barrier
from crossderm.split.folds import inner_validation
from crossderm.train import engine
from crossderm.train.config import ExperimentConfig
from crossderm.train.loader import CacheBatches
from crossderm.train.sampler import EpochSampler, sampling_weights


@dataclass
class FoldData:
    """The three disjoint image sets of one fold (manifest rows)."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame


def fold_data(manifest: pd.DataFrame, config: ExperimentConfig, fold: int) -> FoldData:
    for source in {*config.train_sources, *config.test_sources}:
        if source not in set(manifest["source"]):
            raise CrossdermError(
                f"source {source!r} is not in the prepared data (have {sorted(set(manifest['source']))})"
            )
    if fold not in set(manifest["fold"]):
        raise CrossdermError(f"fold {fold} does not exist (folds: {sorted(set(manifest['fold']))})")
    training = manifest[manifest["source"].isin(config.train_sources) & (manifest["fold"] != fold)]
    training = training.reset_index(drop=True)
    val_mask = inner_validation(training, config.val_fraction, config.seed + fold)
    test = manifest[manifest["source"].isin(config.test_sources) & (manifest["fold"] == fold)].reset_index(drop=True)
    return FoldData(
        train=training[~val_mask].reset_index(drop=True), val=training[val_mask].reset_index(drop=True), test=test
    )


@dataclass
class FoldSetup:
    """Everything one fold trains and predicts with."""

    config: ExperimentConfig
    fold: int
    runtime: Runtime
    data: FoldData
    model: nn.Module  # the plain model: checkpoints, validation and prediction use it
    train_model: nn.Module  # the same model, wrapped for DDP / torch.compile when asked
    parameters: int
    image_size: int
    train_batches: CacheBatches
    val_batches: CacheBatches
    val_tta_batches: CacheBatches
    test_batches: CacheBatches
    sampler: EpochSampler
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: nn.Module


def build_model(config: ExperimentConfig, fold: int, runtime: Runtime) -> tuple[nn.Module, nn.Module]:
    """The fold's seeded model on the device, and its training wrapper (DDP, torch.compile)."""
    torch.manual_seed(engine.epoch_seed(config.seed, fold, -1))
    model = create_model(
        config.model,
        num_classes=len(CLASSES),
        pretrained=config.pretrained,
        pretrained_path=config.pretrained_path,
        drop_rate=config.drop_rate,
        drop_path_rate=config.drop_path_rate,
    ).to(runtime.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_model: nn.Module = model
    if runtime.world_size > 1:
        ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if config.compile:
        train_model = torch.compile(train_model)
    return model, train_model


def setup_fold(
    config: ExperimentConfig, manifest: pd.DataFrame, cache: np.ndarray, fold: int, runtime: Runtime
) -> FoldSetup:
    data = fold_data(manifest, config, fold)
    model, train_model = build_model(config, fold, runtime)
    normalise = Normalise(*normalisation(model), channels_last=config.channels_last)

    def cached(frame: pd.DataFrame, batch_size: int) -> CacheBatches:
        rows = frame["cache_index"].to_numpy()
        return CacheBatches(cache, rows, label_indices(frame["label"]), batch_size, runtime.device, normalise)

    val_batches = cached(data.val, config.eval_batch_size)
    tta_batch = max(1, config.eval_batch_size // config.tta)  # eval_batch_size bounds one forward, views included
    weights = sampling_weights(config.sampler, data.train["label"].to_numpy(), data.train["source"].to_numpy())
    sampler = EpochSampler(weights, len(data.train), config.seed + fold, runtime.rank, runtime.world_size)
    steps = math.ceil(len(sampler) / config.batch_size)
    optimizer = torch.optim.AdamW(
        param_groups_weight_decay(model, config.weight_decay), lr=config.lr, fused=runtime.device.type == "cuda"
    )
    schedule = engine.warmup_cosine(config.epochs * steps, round(config.warmup_epochs * steps))
    return FoldSetup(
        config=config, fold=fold, runtime=runtime, data=data, model=model, train_model=train_model,
        parameters=count_parameters(model), image_size=int(cache.shape[1]),
        train_batches=cached(data.train, config.batch_size), val_batches=val_batches,
        val_tta_batches=val_batches.rebatched(tta_batch), test_batches=cached(data.test, tta_batch),
        sampler=sampler, steps_per_epoch=steps, optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
        loss_fn=nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
    )


def train_fold(setup: FoldSetup, folder: FoldFolder, resume: bool) -> dict[str, Any]:
    """Train the epochs not yet done; the best epoch's weights go to ``best.safetensors``. Returns the progress."""
    config, runtime, fold = setup.config, setup.runtime, setup.fold
    if not resume and engine.has_checkpoint(folder):
        raise CrossdermError(f"{folder.path}: has a checkpoint; pass --resume to continue it")
    state: dict[str, Any] = {"epoch": 0, "best_score": -1.0, "best_epoch": -1, "stale_epochs": 0, "history": []}
    if resume and engine.has_checkpoint(folder):
        state = engine.load_checkpoint(folder, setup.model, setup.optimizer, setup.scheduler, runtime.device)
        if runtime.is_main:
            print(f"fold {fold}: resuming after epoch {state['epoch']}")
    for epoch in range(state["epoch"], config.epochs):
        started = time.perf_counter()
        seed = engine.epoch_seed(config.seed, fold, epoch)
        torch.manual_seed(seed)
        # each rank augments its own shard with its own stream; the sample itself is shared (see sampler)
        generator = torch.Generator(device=runtime.device).manual_seed(seed + 7919 * runtime.rank)
        batches = setup.train_batches.batches(setup.sampler.indices(epoch), config.augment, generator)
        loss, speed = engine.train_one_epoch(
            setup.train_model, batches, setup.optimizer, setup.scheduler, setup.loss_fn, runtime,
            setup.steps_per_epoch, f"fold {fold} epoch {epoch + 1}/{config.epochs}",
        )
        score = engine.evaluate(setup.train_model, setup.data.val, setup.val_batches.batches(), runtime)
        improved = score > state["best_score"]
        if improved:
            state.update(best_score=score, best_epoch=epoch + 1, stale_epochs=0)
            if runtime.is_main:
                engine.save_weights(setup.model, folder.best_weights)
        else:
            state["stale_epochs"] += 1
        state["history"].append({
            "epoch": epoch + 1,
            "train_loss": round(loss, 5),
            "val_macro_f1": round(score, 5),
            "lr": setup.scheduler.get_last_lr()[0],
            "images_per_s": round(speed, 1),
            "seconds": round(time.perf_counter() - started, 2),
        })
        state["epoch"] = epoch + 1
        if runtime.is_main:
            engine.save_checkpoint(folder, setup.model, setup.optimizer, setup.scheduler, state)
            tqdm.write(
                f"fold {fold} epoch {epoch + 1}/{config.epochs}: loss {loss:.4f}  "
                f"val macro-F1 {score:.4f}{' *' if improved else ''}  {speed:.0f} img/s"
            )
            atomic_write_text(folder.history, pd.DataFrame(state["history"]).to_csv(index=False))
        barrier()
        if config.patience is not None and state["stale_epochs"] >= config.patience:
            break
    barrier()
    return state


def _prediction_table(setup: FoldSetup, frame: pd.DataFrame, batches: CacheBatches) -> pd.DataFrame:
    probs = predict_batches(setup.model, batches.batches(), views=setup.config.tta, bf16=setup.runtime.bf16)
    table = frame[["image_id", "source", "label"]].copy()
    for index, name in enumerate(CLASSES):
        table[name] = probs[:, index].astype(np.float64)
    table["fold"] = setup.fold
    return table


def predict_fold(setup: FoldSetup, folder: FoldFolder, state: dict[str, Any]) -> pd.DataFrame:
    """Test-fold probabilities from the best epoch's weights, with the configured TTA views (rank 0 only).

    The inner-validation images are predicted the same way into ``val_predictions.csv``: calibration
    (temperature scaling) is fitted on them, never on the test fold.
    """
    if not setup.runtime.is_main:
        return setup.data.test.iloc[:0]
    setup.model.load_state_dict(load_file(folder.best_weights, device=str(setup.runtime.device)))
    val = _prediction_table(setup, setup.data.val, setup.val_tta_batches)
    atomic_write_text(folder.val_predictions, val.to_csv(index=False))
    mean, std = normalisation(setup.model)
    write_card(folder.model_card, ModelCard(
        experiment=setup.config.name, fold=setup.fold, model=setup.config.model, classes=list(CLASSES),
        image_size=setup.image_size, mean=list(mean), std=list(std), tta=setup.config.tta,
        parameters=setup.parameters, weights=folder.best_weights.name, sha256=sha256_file(folder.best_weights),
        best_epoch=state["best_epoch"], val_score=state["best_score"],
    ))
    return _prediction_table(setup, setup.data.test, setup.test_batches)
