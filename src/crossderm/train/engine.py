"""The training engine's free functions (the ConvNeXt repo's ``engine.py`` role), each testable on its own.

:func:`train_one_epoch` runs one pass over given batches; :func:`evaluate` scores the inner validation split;
:func:`save_checkpoint` / :func:`load_checkpoint` make a fold resumable. :mod:`crossderm.train.fold` wires them.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save, save_file
from torch import nn
from tqdm import tqdm

from crossderm.errors import CrossdermError
from crossderm.evaluate.metrics import confusion_matrix, metrics_from_confusion
from crossderm.fsutil import atomic_directory, atomic_write_bytes, atomic_write_json
from crossderm.labels import CLASSES, label_indices
from crossderm.models.tta import call, predict_batches
from crossderm.runfolder import CHECKPOINT_OPTIMIZER, CHECKPOINT_STATE, CHECKPOINT_WEIGHTS, FoldFolder
from crossderm.runtime import Runtime

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier per optimiser step: linear warm-up, then cosine decay to zero."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def epoch_seed(seed: int, fold: int, epoch: int) -> int:
    """The RNG seed of one epoch of one fold: a resumed fold retraces the uninterrupted one exactly."""
    return (seed * 1_000_003 + fold * 10_007 + epoch) % (2**63)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside torch.compile and DistributedDataParallel wrappers."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in unwrap(model).state_dict().items()}


def train_one_epoch(
    model: nn.Module,
    batches: Batches,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: nn.Module,
    runtime: Runtime,
    steps: int | None = None,
    description: str = "train",
) -> tuple[float, float]:
    """One pass; returns (mean loss over the global sample, images/s). The loss sums on the device: one sync."""
    model.train()
    total = torch.zeros((), device=runtime.device)
    seen = torch.zeros((), device=runtime.device)
    autocast = torch.autocast(runtime.device.type, dtype=torch.bfloat16) if runtime.bf16 else nullcontext()
    started = time.perf_counter()
    progress = tqdm(batches, total=steps, desc=description, unit="batch", leave=False,
                    disable=None if runtime.is_main else True)
    for images, labels in progress:
        with autocast:
            loss = loss_fn(call(model, images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.detach() * len(labels)
        seen += len(labels)
    if dist.is_initialized():  # the logged loss is over the whole global sample, not rank 0's shard
        dist.all_reduce(total)
        dist.all_reduce(seen)
    count = float(seen.item())
    return float(total.item()) / max(1.0, count), count / (time.perf_counter() - started)


def validation_score(frame: pd.DataFrame, probs: np.ndarray) -> float:
    """Mean over sources of macro-F1 (classes present in each source): the model-selection score."""
    predicted = probs.argmax(axis=1)
    truth = label_indices(frame["label"])
    scores = []
    for source in sorted(frame["source"].unique()):
        mask = (frame["source"] == source).to_numpy()
        cm = confusion_matrix(truth[mask], predicted[mask], len(CLASSES))
        scores.append(float(metrics_from_confusion(cm, cm.sum(axis=1) > 0)["macro_f1"]))
    return float(np.mean(scores))


def evaluate(model: nn.Module, frame: pd.DataFrame, batches: Batches, runtime: Runtime) -> float:
    """Inner-validation score (one view), computed on rank 0 and shared so every rank takes the same decisions."""
    score = torch.zeros((), dtype=torch.float64, device=runtime.device)
    if runtime.is_main:
        score.fill_(validation_score(frame, predict_batches(unwrap(model), batches, views=1, bf16=runtime.bf16)))
    if dist.is_initialized():
        dist.broadcast(score, src=0)
    return float(score.item())


def save_weights(model: nn.Module, path: Any) -> None:
    """The model's weights as safetensors, written atomically (fsync, then rename)."""
    atomic_write_bytes(path, save(weights(model)))


def save_checkpoint(
    folder: FoldFolder,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: dict[str, Any],
) -> None:
    """Weights (safetensors), optimiser/scheduler (tensors only) and progress, renamed into place together."""
    with atomic_directory(folder.checkpoint, overwrite=True) as staging:
        save_file(weights(model), staging / CHECKPOINT_WEIGHTS)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                   staging / CHECKPOINT_OPTIMIZER)
        atomic_write_json(staging / CHECKPOINT_STATE, state)


def has_checkpoint(folder: FoldFolder) -> bool:
    return (folder.checkpoint / CHECKPOINT_STATE).is_file()


def load_checkpoint(
    folder: FoldFolder,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote; returns the saved progress. A damaged checkpoint is a one-line
    error (it was replaced atomically, so only outside hands damage it)."""
    try:
        model.load_state_dict(load_file(folder.checkpoint / CHECKPOINT_WEIGHTS, device=str(device)))
        saved = torch.load(folder.checkpoint / CHECKPOINT_OPTIMIZER, map_location=device, weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = json.loads((folder.checkpoint / CHECKPOINT_STATE).read_text())
        if not isinstance(state, dict) or not isinstance(state.get("epoch"), int):
            raise ValueError("state.json has no epoch")
        return state
    except Exception as exc:  # safetensors, torch.load, json and shape errors all mean "unusable checkpoint"
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise CrossdermError(f"{folder.checkpoint}: cannot resume from it ({type(exc).__name__}: {reason}); "
                             f"delete it to train fold {folder.fold} again from epoch 1") from None
