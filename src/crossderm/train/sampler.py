"""Epoch samplers: uniform, class-, square-root class-, source-, source x class-, site- and site x class-balanced.

Each epoch draws ``num_samples`` training indices. The weighted kinds draw with replacement from
per-image weights (``torch.multinomial``) so that, in expectation:

- ``class_balanced``: every class contributes 1/C of the draws (w = 1 / n_class);
- ``class_sqrt``: square-root sampling (Mahajan et al. 2018; Kang et al., ICLR 2020): a class's share of the
  draws is proportional to sqrt(n_class) (w = 1 / sqrt(n_class)). Between the natural mix and full balance: rare
  classes are seen far more often than in a uniform shuffle, yet the model is not taught that df is as common as
  nv, which full balance does (on the real sample it over-predicts the rare classes: low precision, low F1);
- ``source_balanced``: every source contributes 1/S of the draws, the class mix within a source kept
  as it is (w = 1 / n_source) - the paper's sampler for joint HAM + ISIC training;
- ``source_class_balanced``: every (source, class) cell present contributes equally (w = 1 / n_cell);
- ``site_balanced``: every acquisition site (``source/site``) contributes 1/S' of the draws, the natural
  generalisation of the source-balanced sampler to the sites of a multi-site pool (w = 1 / n_site);
- ``site_class_balanced``: every (site, class) cell present contributes equally.

Distributed training: every rank draws the *same* global sample from a generator seeded with
``(seed, epoch)``, pads it to a multiple of the world size by repeating its head, and keeps every
``world_size``-th index from ``rank``. The union over ranks is exactly the single-process sample plus at
most ``world_size - 1`` padded repeats, so the source/class proportions are those of one process.
PyTorch has no distributed ``WeightedRandomSampler``; this fills that gap.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from crossderm.errors import CrossdermError

SAMPLERS = (
    "uniform", "class_balanced", "class_sqrt", "source_balanced", "source_class_balanced", "site_balanced",
    "site_class_balanced",
)


def sampling_weights(
    kind: str, labels: np.ndarray, sources: np.ndarray, sites: np.ndarray | None = None
) -> np.ndarray | None:
    """Per-image draw weights for ``kind`` (``None`` for a uniform shuffle), normalised to sum to 1.

    ``sites``: each image's ``source/site`` key (needed by the site kinds)."""
    if kind == "uniform":
        return None
    if kind in ("class_balanced", "class_sqrt"):
        keys = labels.astype(str)
    elif kind == "source_balanced":
        keys = sources.astype(str)
    elif kind == "source_class_balanced":
        keys = np.char.add(np.char.add(sources.astype(str), "/"), labels.astype(str))
    elif kind in ("site_balanced", "site_class_balanced"):
        if sites is None:
            raise CrossdermError(f"sampler {kind} needs each image's site")
        keys = sites.astype(str)
        if kind == "site_class_balanced":
            keys = np.char.add(np.char.add(keys, "|"), labels.astype(str))
    else:
        raise CrossdermError(f"unknown sampler {kind!r} (choose from {', '.join(SAMPLERS)})")
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    weights = 1.0 / (np.sqrt(counts[inverse]) if kind == "class_sqrt" else counts[inverse])
    return weights / weights.sum()


class EpochSampler:
    """Indices (into the training subset) for one epoch; deterministic in ``(seed, epoch)``."""

    def __init__(
        self,
        weights: np.ndarray | None,
        num_samples: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if weights is None and num_samples <= 0:
            raise CrossdermError("nothing to sample from: the training set is empty")
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.num_samples = num_samples
        self.seed = seed
        self.rank = rank
        self.world_size = world_size

    def global_indices(self, epoch: int) -> torch.Tensor:
        """The whole epoch's draw, identical on every rank."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.weights is None:
            return torch.randperm(self.num_samples, generator=generator)
        return torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator)

    def indices(self, epoch: int) -> torch.Tensor:
        """This rank's share of the epoch (all of it when not distributed)."""
        drawn = self.global_indices(epoch)
        per_rank = math.ceil(len(drawn) / self.world_size)
        padding = per_rank * self.world_size - len(drawn)
        if padding:
            drawn = torch.cat([drawn, drawn[:padding]])
        return drawn[self.rank :: self.world_size]

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.world_size)
