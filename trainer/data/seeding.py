"""Every random draw of a run comes from its one seed, named by where it is used.

``derive(seed, *path)`` is numpy's SeedSequence over ``[seed, *path]``, where the path starts with which
draws these are (:data:`SAMPLING`, :data:`AUGMENT`, :data:`STEP`) and goes on with where (epoch, step,
rank). Distinct paths give independent streams that never collide, whatever the run's length or process
count, and the same path gives the same draws on any device and after a resume.
"""
from __future__ import annotations

import numpy as np
import torch

SAMPLING = 0  # one epoch's sample order, identical on every rank: (SAMPLING, epoch)
AUGMENT = 1  # one batch's augmentation on one rank: (AUGMENT, epoch, step, rank)
STEP = 2  # the torch RNG of one training step on one rank (dropout, chunk picks): (STEP, epoch, step, rank)
SUBSTITUTE = 3  # the samples that replace a corrupt one in a batch slot: (SUBSTITUTE, epoch, step, rank, slot)


def derive(seed: int, *path: int) -> np.random.SeedSequence:
    """The seed sequence of the draws at ``path`` in a run seeded with ``seed``."""
    return np.random.SeedSequence([seed, *path])


def numpy_rng(seed: int, *path: int) -> np.random.Generator:
    return np.random.default_rng(derive(seed, *path))


def torch_seed(seed: int, *path: int) -> int:
    """A 63-bit seed for ``torch.manual_seed`` or a ``torch.Generator``."""
    return int(derive(seed, *path).generate_state(1, np.uint64)[0] >> np.uint64(1))


def torch_generator(seed: int, *path: int) -> torch.Generator:
    return torch.Generator().manual_seed(torch_seed(seed, *path))
