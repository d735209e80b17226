"""Training and evaluation of one cross-validation fold (the ConvNeXt repo's ``engine`` role).

One fold: train on the training folds of the training sources, pick the best epoch on a lesion-grouped
inner validation split, then predict the fold's test images of every test source with TTA.
Every epoch ends with an atomic checkpoint; RNG streams are re-seeded from ``(seed, fold, epoch)`` at
each epoch start, so a resumed fold retraces the uninterrupted one exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from timm.optim import param_groups_weight_decay
from torch import nn
from tqdm import tqdm

from crossderm.errors import CrossdermError
from crossderm.evaluate.metrics import confusion_matrix, metrics_from_confusion
from crossderm.fsutil import atomic_directory, atomic_write_json, atomic_write_text
from crossderm.labels import CLASSES
from crossderm.predict.tta import predict_cached
from crossderm.split.folds import inner_validation
from crossderm.train.config import ExperimentConfig
from crossderm.train.cpu import keep_freed_memory
from crossderm.train.loader import CacheBatches, Normalise
from crossderm.train.models import count_parameters, create_model, normalisation
from crossderm.train.sampler import EpochSampler, sampling_weights

CLASS_INDEX = {c: i for i, c in enumerate(CLASSES)}
MODEL_CARD_FORMAT = "crossderm-model/1"


@dataclass
class Runtime:
    """Where and how this process trains: device, precision and its place in a distributed job."""

    device: torch.device
    amp: bool
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def resolve(cls, device: str, amp: str) -> Runtime:
        """``device='auto'`` picks CUDA when present; bf16 autocast only on CUDA (it is far slower on CPU)."""
        rank = dist.get_rank() if dist.is_initialized() else 0
        world = dist.get_world_size() if dist.is_initialized() else 1
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise CrossdermError(f"--device {device}: CUDA is not available on this machine")
            if dist.is_initialized():
                device = f"cuda:{torch.cuda.current_device()}"
        resolved = torch.device(device)
        if resolved.type == "cpu":
            keep_freed_memory()
        use_amp = amp == "bf16" or (amp == "auto" and resolved.type == "cuda")
        return cls(device=resolved, amp=use_amp, rank=rank, world_size=world)


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
    training = manifest[manifest["source"].isin(config.train_sources) & (manifest["fold"] != fold)].reset_index(
        drop=True
    )
    val_mask = inner_validation(training, config.val_fraction, config.seed + fold)
    test = manifest[manifest["source"].isin(config.test_sources) & (manifest["fold"] == fold)].reset_index(drop=True)
    return FoldData(
        train=training[~val_mask].reset_index(drop=True), val=training[val_mask].reset_index(drop=True), test=test
    )


def _labels(frame: pd.DataFrame) -> np.ndarray:
    return frame["label"].map(CLASS_INDEX).to_numpy()


def _macro_f1_per_source(frame: pd.DataFrame, probs: np.ndarray) -> float:
    """Mean over sources of macro-F1 (classes present in each source): the model-selection score."""
    predicted = probs.argmax(axis=1)
    truth = _labels(frame)
    scores = []
    for source in sorted(frame["source"].unique()):
        mask = (frame["source"] == source).to_numpy()
        cm = confusion_matrix(truth[mask], predicted[mask], len(CLASSES))
        scores.append(float(metrics_from_confusion(cm, cm.sum(axis=1) > 0)["macro_f1"]))
    return float(np.mean(scores))


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier per optimiser step: linear warm-up, then cosine decay to zero."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _seed_epoch(seed: int, fold: int, epoch: int) -> int:
    return (seed * 1_000_003 + fold * 10_007 + epoch) % (2**63)


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class FoldTrainer:
    """Trains one fold into ``fold_dir``; ``run()`` returns the test predictions table."""

    def __init__(
        self,
        config: ExperimentConfig,
        manifest: pd.DataFrame,
        cache: np.ndarray,
        fold: int,
        fold_dir: Path,
        runtime: Runtime,
    ) -> None:
        self.config, self.fold, self.fold_dir, self.runtime = config, fold, Path(fold_dir), runtime
        if runtime.is_main:
            self.fold_dir.mkdir(parents=True, exist_ok=True)
        self.data = fold_data(manifest, config, fold)
        torch.manual_seed(_seed_epoch(config.seed, fold, -1))
        model = create_model(
            config.model,
            num_classes=len(CLASSES),
            pretrained=config.pretrained,
            pretrained_path=config.pretrained_path,
            drop_rate=config.drop_rate,
            drop_path_rate=config.drop_path_rate,
        )
        self.parameters = count_parameters(model)
        mean, std = normalisation(model)
        self.model = model.to(runtime.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.train_model: nn.Module = self.model
        if runtime.world_size > 1:
            ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if config.compile:
            self.train_model = torch.compile(self.train_model)
        normalise = Normalise(mean, std, config.channels_last)

        def cached(frame: pd.DataFrame, batch_size: int) -> CacheBatches:
            rows = frame["cache_index"].to_numpy()
            return CacheBatches(cache, rows, _labels(frame), batch_size, runtime.device, normalise)

        self.train_batches = cached(self.data.train, config.batch_size)
        # eval_batch_size bounds the images of one forward pass, TTA views included
        tta_batch = max(1, config.eval_batch_size // config.tta)
        self.val_batches = cached(self.data.val, config.eval_batch_size)
        self.val_tta_batches = self.val_batches.rebatched(tta_batch)
        self.test_batches = cached(self.data.test, tta_batch)
        weights = sampling_weights(
            config.sampler, self.data.train["label"].to_numpy(), self.data.train["source"].to_numpy()
        )
        self.sampler = EpochSampler(weights, len(self.data.train), config.seed + fold, runtime.rank, runtime.world_size)
        self.steps_per_epoch = math.ceil(len(self.sampler) / config.batch_size)
        self.optimizer = torch.optim.AdamW(
            param_groups_weight_decay(self.model, config.weight_decay),
            lr=config.lr,
            fused=runtime.device.type == "cuda",
        )
        warmup = round(config.warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(config.epochs * self.steps_per_epoch, warmup)
        )
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.state = {"epoch": 0, "best_score": -1.0, "best_epoch": -1, "stale_epochs": 0, "history": []}

    # --- checkpoints -------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.fold_dir / "checkpoint"

    def save_checkpoint(self) -> None:
        """Weights (safetensors), optimiser/scheduler (tensors only) and progress, renamed into place at once."""
        if not self.runtime.is_main:
            return
        with atomic_directory(self.checkpoint_dir, overwrite=True) as staging:
            save_file(_state_dict(self.model), staging / "model.safetensors")
            torch.save(
                {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                staging / "optimizer.pt",
            )
            atomic_write_json(staging / "state.json", self.state)

    def load_checkpoint(self) -> bool:
        if not (self.checkpoint_dir / "state.json").is_file():
            return False
        self.model.load_state_dict(
            load_file(self.checkpoint_dir / "model.safetensors", device=str(self.runtime.device))
        )
        saved = torch.load(self.checkpoint_dir / "optimizer.pt", map_location=self.runtime.device, weights_only=True)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.state = json.loads((self.checkpoint_dir / "state.json").read_text())
        return True

    # --- loop --------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> tuple[float, float]:
        """One epoch; returns (mean loss, images/s). The loss is summed on the device: one sync per epoch."""
        seed = _seed_epoch(self.config.seed, self.fold, epoch)
        torch.manual_seed(seed)
        # each rank augments its own shard with its own stream; the sample itself is shared (see sampler)
        generator = torch.Generator(device=self.runtime.device).manual_seed(seed + 7919 * self.runtime.rank)
        self.train_model.train()
        order = self.sampler.indices(epoch)
        total = torch.zeros((), device=self.runtime.device)
        autocast = torch.autocast(self.runtime.device.type, dtype=torch.bfloat16) if self.runtime.amp else nullcontext()
        started = time.perf_counter()
        batches = self.train_batches.batches(order, self.config.augment, generator)
        progress = tqdm(
            batches,
            total=self.steps_per_epoch,
            desc=f"fold {self.fold} epoch {epoch + 1}/{self.config.epochs}",
            unit="batch",
            leave=False,
            disable=None if self.runtime.is_main else True,
        )
        for images, labels in progress:
            with autocast:
                loss = self.loss_fn(self.train_model(images), labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            total += loss.detach() * len(labels)
        seen = torch.tensor(float(len(order)), device=self.runtime.device)
        if dist.is_initialized():  # the logged loss is over the whole global sample, not rank 0's shard
            dist.all_reduce(total)
            dist.all_reduce(seen)
        return float(total.item()) / max(1.0, float(seen.item())), float(seen.item()) / (time.perf_counter() - started)

    def validate(self) -> float:
        """Inner-validation score, computed on rank 0 and shared so every rank takes the same decisions."""
        score = torch.zeros((), dtype=torch.float64, device=self.runtime.device)
        if self.runtime.is_main:
            probs = predict_cached(_unwrap(self.train_model), self.val_batches, views=1, amp=self.runtime.amp)
            score.fill_(_macro_f1_per_source(self.data.val, probs))
        if dist.is_initialized():
            dist.broadcast(score, src=0)
        return float(score.item())

    def run(self, resume: bool) -> pd.DataFrame:
        resumed = resume and self.load_checkpoint()
        if not resume and (self.checkpoint_dir / "state.json").is_file():
            raise CrossdermError(f"{self.fold_dir}: has a checkpoint; pass --resume to continue it")
        best_path = self.fold_dir / "best.safetensors"
        history_lines = []
        if self.runtime.is_main and resumed:
            print(f"fold {self.fold}: resuming after epoch {self.state['epoch']}")
        for epoch in range(self.state["epoch"], self.config.epochs):
            started = time.perf_counter()
            loss, speed = self.train_epoch(epoch)
            score = self.validate()
            improved = score > self.state["best_score"]
            if improved:
                self.state.update(best_score=score, best_epoch=epoch + 1, stale_epochs=0)
                if self.runtime.is_main:
                    _atomic_save_weights(self.model, best_path)
            else:
                self.state["stale_epochs"] += 1
            row = {
                "epoch": epoch + 1,
                "train_loss": round(loss, 5),
                "val_macro_f1": round(score, 5),
                "lr": self.scheduler.get_last_lr()[0],
                "images_per_s": round(speed, 1),
                "seconds": round(time.perf_counter() - started, 2),
            }
            self.state["history"].append(row)
            self.state["epoch"] = epoch + 1
            self.save_checkpoint()
            if self.runtime.is_main:
                history_lines.append(row)
                tqdm.write(
                    f"fold {self.fold} epoch {epoch + 1}/{self.config.epochs}: loss {loss:.4f}  "
                    f"val macro-F1 {score:.4f}{' *' if improved else ''}  {speed:.0f} img/s"
                )
                atomic_write_text(
                    self.fold_dir / "history.csv", pd.DataFrame(self.state["history"]).to_csv(index=False)
                )
            _barrier()
            if self.config.patience is not None and self.state["stale_epochs"] >= self.config.patience:
                break
        _barrier()
        return self.predict_test(best_path)

    def predict_test(self, best_path: Path) -> pd.DataFrame:
        """Test-fold probabilities from the best epoch's weights, with the configured TTA views.

        The inner-validation images are predicted the same way into ``val_predictions.csv``: calibration
        (temperature scaling) is fitted on them, never on the test fold.
        """
        if not self.runtime.is_main:
            return self.data.test.iloc[:0]
        self.model.load_state_dict(load_file(best_path, device=str(self.runtime.device)))
        val = self._prediction_table(self.data.val, self.val_tta_batches)
        atomic_write_text(self.fold_dir / "val_predictions.csv", val.to_csv(index=False))
        self.write_model_card(best_path)
        return self._prediction_table(self.data.test, self.test_batches)

    def _prediction_table(self, frame: pd.DataFrame, batches: CacheBatches) -> pd.DataFrame:
        probs = predict_cached(self.model, batches, views=self.config.tta, amp=self.runtime.amp)
        table = frame[["image_id", "source", "label"]].copy()
        for index, name in enumerate(CLASSES):
            table[name] = probs[:, index].astype(np.float64)
        table["fold"] = self.fold
        return table

    def write_model_card(self, best_path: Path) -> None:
        """``model.json``: everything inference needs, and the weights' sha256 so tampering is detected."""
        mean, std = normalisation(self.model)
        atomic_write_json(
            self.fold_dir / "model.json",
            {
                "format": MODEL_CARD_FORMAT,
                "experiment": self.config.name,
                "fold": self.fold,
                "model": self.config.model,
                "classes": list(CLASSES),
                "image_size": int(self.train_batches.cache.shape[1]),
                "mean": list(mean),
                "std": list(std),
                "tta": self.config.tta,
                "parameters": self.parameters,
                "weights": best_path.name,
                "sha256": sha256_file(best_path),
                "best_epoch": self.state["best_epoch"],
                "val_score": self.state["best_score"],
            },
        )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in _unwrap(model).state_dict().items()}


def _atomic_save_weights(model: nn.Module, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(_state_dict(model), tmp)
    tmp.replace(path)
