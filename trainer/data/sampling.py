"""Which samples each rank reads, in which order: pure functions of (seed, epoch, rank, world_size).

Training draws one global sequence identically on every rank and gives each rank a disjoint strided
slice of it, so ranks see the same number of batches. Evaluation assigns every sample to exactly one
rank, in manifest order; ranks get the same number of batches, and a rank's last batch may be short
(or empty) rather than padded with duplicates.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from trainer.data.seeding import SAMPLING, torch_generator


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's sampling; identical on every rank."""
    return torch_generator(seed, SAMPLING, epoch)


def train_batches_per_rank(num_samples: int, batch_size: int, world_size: int) -> int:
    """Batches per rank and epoch: ``num_samples`` draws rounded up to whole batches on every rank."""
    return max(1, math.ceil(num_samples / (batch_size * world_size)))


def train_order(weights: Sequence[float] | torch.Tensor, num_samples: int, weighted: bool, batch_size: int,
                seed: int, epoch: int, rank: int, world_size: int) -> torch.Tensor:
    """This rank's sample indices for one epoch, ``train_batches_per_rank × batch_size`` long.

    Weighted: exactly ``WeightedRandomSampler(weights, total, replacement=True, generator=g)``, where
    ``total`` is ``num_samples`` rounded up so that every rank fills the same number of whole batches.
    Unweighted: a permutation without replacement, wrapped around when ``total`` exceeds it.
    """
    w = torch.as_tensor(weights, dtype=torch.double)
    n = len(w)
    if n == 0:
        raise ValueError("no training samples")
    per_rank = train_batches_per_rank(num_samples, batch_size, world_size) * batch_size
    total = per_rank * world_size
    g = epoch_generator(seed, epoch)
    if weighted:
        # the body of WeightedRandomSampler.__iter__
        order = torch.multinomial(w, total, replacement=True, generator=g)
    else:
        perm = torch.randperm(n, generator=g)
        order = perm.repeat(math.ceil(total / n))[:total]
    return order[rank::world_size]


def eval_order(n: int, batch_size: int, rank: int, world_size: int) -> list[torch.Tensor]:
    """This rank's batches of sample indices: every sample exactly once across ranks, no padding.

    Every rank gets ``ceil(n / (world_size × batch_size))`` batches so collective ops stay in step;
    samples are dealt round-robin, so a rank's last batch may be shorter, or empty.
    """
    mine = torch.arange(rank, n, world_size)
    num_batches = max(1, math.ceil(n / (world_size * batch_size)))
    return [mine[i * batch_size:(i + 1) * batch_size] for i in range(num_batches)]
