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
from timm.optim import param_groups_weight_decay
from torch import nn
from tqdm import tqdm

from crossderm.errors import CrossdermError
from crossderm.fsutil import atomic_write_text
from crossderm.labels import CLASSES, label_indices
from crossderm.models.factory import count_parameters, create_model, normalisation
from crossderm.models.preprocess import Normalise
from crossderm.patient import encode_metadata
from crossderm.runfolder import FoldFolder
from crossderm.runtime import Runtime, barrier
from crossderm.split.folds import inner_validation
from crossderm.train import engine
from crossderm.train.config import ExperimentConfig
from crossderm.train.loader import CacheBatches
from crossderm.train.protocols import Job, job_images, job_of, site_keys
from crossderm.train.sampler import EpochSampler, sampling_weights
from crossderm.train.tracking import Tracker


@dataclass
class FoldData:
    """The disjoint image sets of one job (manifest rows): train, inner validation, test; external images."""

    job: Job
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    external: pd.DataFrame


def fold_data(manifest: pd.DataFrame, config: ExperimentConfig, fold: int) -> FoldData:
    job = job_of(manifest, config, fold)
    images = job_images(manifest, config, job)
    training = manifest[images.train & ~manifest["label"].isin(config.held_out_classes).to_numpy()]
    training = training.reset_index(drop=True)
    if training.empty:
        raise CrossdermError(f"{job.name}: no training images (train_sources {config.train_sources})")
    val_mask = inner_validation(training, config.val_fraction, config.seed + fold)
    return FoldData(
        job=job,
        train=training[~val_mask].reset_index(drop=True),
        val=training[val_mask].reset_index(drop=True),
        test=manifest[images.test].reset_index(drop=True),
        external=manifest[images.external].reset_index(drop=True),
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
    external_batches: CacheBatches
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
        metadata=config.metadata,
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
        metadata = encode_metadata(frame["age"], frame["sex"], frame["anatom_site"]) if config.metadata else None
        return CacheBatches(cache, rows, label_indices(frame["label"]), batch_size, runtime.device, normalise,
                            metadata=metadata)

    val_batches = cached(data.val, config.eval_batch_size)
    tta_batch = max(1, config.eval_batch_size // config.tta)  # eval_batch_size bounds one forward, views included
    weights = sampling_weights(config.sampler, data.train["label"].to_numpy(), data.train["source"].to_numpy(),
                               site_keys(data.train).to_numpy())
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
        external_batches=cached(data.external, tta_batch),
        sampler=sampler, steps_per_epoch=steps, optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
        loss_fn=nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
    )


def starting_state(setup: FoldSetup, folder: FoldFolder, resume: bool) -> dict[str, Any]:
    """The progress to train from: fresh, or the checkpoint's (loaded into the model and optimiser). Separate
    from :func:`train_fold` so that a missing ``--resume`` or a damaged checkpoint fails before anything is
    written."""
    if not resume and engine.has_checkpoint(folder):
        raise CrossdermError(f"{folder.path}: has a checkpoint; pass --resume to continue it")
    if resume and engine.has_checkpoint(folder):
        state = engine.load_checkpoint(folder, setup.model, setup.optimizer, setup.scheduler, setup.runtime.device)
        if setup.runtime.is_main:
            print(f"fold {setup.fold}: resuming after epoch {state['epoch']}")
        return state
    return {"epoch": 0, "best_score": -1.0, "best_epoch": -1, "stale_epochs": 0, "history": []}


def train_fold(setup: FoldSetup, folder: FoldFolder, resume: bool, tracker: Tracker | None = None,
               state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train the epochs not yet done; the best epoch's weights go to ``best.safetensors``. Returns the progress.

    ``tracker`` gets each epoch's history row once its checkpoint is written (crossderm.train.tracking);
    ``state``: what :func:`starting_state` returned, when the caller already asked it.
    """
    config, runtime, fold = setup.config, setup.runtime, setup.fold
    tracker = tracker or Tracker()
    if state is None:
        state = starting_state(setup, folder, resume)
    if runtime.is_main:
        tracker.start_fold(fold, setup.data.job.name, state["history"])
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
            tracker.log_epoch(fold, state["history"][-1])
        barrier()
        if config.patience is not None and state["stale_epochs"] >= config.patience:
            break
    barrier()
    return state
