"""Which records each batch of a stream holds, in plain Python (no DALI): :class:`TrainPlan` (weighted or uniform
sampling, substitutes for corrupt samples, the resumable position) and :class:`EvalPlan` (manifest order, clips
that do not decode left out and reported). The DALI stream (trainer/data/streams.py) runs either.

A plan names each batch of the current pass by a key and plans batches from any one on, running on into the
passes that follow, so DALI's prefetch crosses pass boundaries instead of the pipeline being rebuilt; told which
samples of a batch are corrupt, it takes them out of the batches planned from then on (or raises).
"""
from __future__ import annotations

import warnings
from typing import Hashable, Iterator

import numpy as np
import torch

from trainer.data.corrupt import CorruptLog
from trainer.data.records import RecordTable
from trainer.data.sampling import eval_order, train_batches_per_rank, train_order
from trainer.data.seeding import SUBSTITUTE, numpy_rng


class TrainPlan:
    """Training batches of one rank: PSLA weighted (or uniform) sampling, a pure function of (seed, epoch, rank),
    resumable mid-epoch (:attr:`epoch`, :attr:`position`). ``corrupt`` None: a sample that fails to decode stops
    the run, naming it; a :class:`CorruptLog`: it is logged there and replaced in its batch."""

    def __init__(self, records: RecordTable, batch_size: int, seed: int, rank: int, world_size: int,
                 weighted: bool = True, num_samples: int | None = None, corrupt: CorruptLog | None = None) -> None:
        self.records, self.batch_size, self.seed = records, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.weighted = weighted  # PSLA: draws ∝ the records' weights, with replacement
        self.epoch = 0
        self.position = 0  # batches of this epoch handed to the caller
        self.num_samples = num_samples or len(records)
        self.corrupt = corrupt
        # the weight column itself where it is a writable float64 array (a copy where it is the cache's map)
        self._weights = torch.from_numpy(np.require(records.weight, np.float64, ["C", "W"]))
        self._orders: dict[int, np.ndarray] = {}  # batches × batch size record indices of the epochs being planned
        self._bad: set[int] = set()  # record indices known corrupt
        self._cumulative: np.ndarray | None = None  # cumulative weights, for drawing substitutes

    def __len__(self) -> int:
        return train_batches_per_rank(self.num_samples, self.batch_size, self.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Move to ``epoch``; setting the current epoch again keeps a resumed position."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def batches(self, epoch: int | None = None) -> np.ndarray:
        """This rank's record indices of ``epoch`` (default: the current one), one row per batch, as drawn
        (before corrupt samples are replaced)."""
        epoch = self.epoch if epoch is None else epoch
        if epoch not in self._orders:
            order = train_order(self._weights, self.num_samples, self.weighted, self.batch_size,
                                self.seed, epoch, self.rank, self.world_size)
            self._orders = {e: b for e, b in self._orders.items() if e >= self.epoch}
            # an array, not lists of Python ints: an AudioSet-scale epoch is millions of draws
            self._orders[epoch] = order.view(-1, self.batch_size).contiguous().numpy()
        return self._orders[epoch]

    def _final(self, epoch: int, i: int, drawn: np.ndarray) -> list[int]:
        """Batch ``i`` of ``epoch`` with each corrupt sample replaced by the first decodable one drawn for
        its slot (as the sampler draws: by weight, or uniformly)."""
        idx = drawn.tolist()
        if self._bad.isdisjoint(idx):
            return idx
        out = list(idx)
        for slot, r in enumerate(idx):
            if r in self._bad:
                rng = numpy_rng(self.seed, SUBSTITUTE, epoch, i, self.rank, slot)
                while r in self._bad:
                    r = self._draw(rng)
                out[slot] = r
        return out

    def _draw(self, rng: np.random.Generator) -> int:
        if not self.weighted:
            return int(rng.integers(len(self.records)))
        if self._cumulative is None:
            self._cumulative = np.cumsum(self._weights.numpy())
        at = np.searchsorted(self._cumulative, rng.random() * self._cumulative[-1], side="right")
        return int(min(at, len(self.records) - 1))

    def batch(self, i: int) -> list[int]:
        """Record indices of batch ``i`` of the current epoch, corrupt samples replaced."""
        return self._final(self.epoch, i, self.batches()[i])

    def key(self, i: int) -> Hashable:
        """Identity of batch ``i`` of the current epoch, as :meth:`plan` names it."""
        return self.seed, self.epoch, i

    def plan(self, start: int) -> Iterator[tuple[Hashable, list[int]]]:
        """(key, record indices) from batch ``start`` of the current epoch on, into the epochs that follow."""
        self._refresh()
        epoch = self.epoch
        while True:
            batches = self.batches(epoch)
            for i in range(start, len(batches)):
                yield (self.seed, epoch, i), self._final(epoch, i, batches[i])
            epoch, start = epoch + 1, 0

    def _refresh(self) -> None:
        """Take in the corrupt samples other ranks (or an earlier run of this one) found."""
        known = self.corrupt.refresh() if self.corrupt is not None else set()
        self._bad = set(self.records.find(known).values())

    def exclude(self, bad: dict[int, str], i: int) -> None:
        """Log the corrupt samples ``bad`` (record index → error), found at batch ``i``, and replace them from
        now on; without a log, raise naming the first."""
        if self.corrupt is None:
            raise corrupt_error(self.records, bad)
        for j, error in bad.items():
            self.corrupt.add(self.records.key(j), self.records.shard(j), error, self.epoch + 1, i + 1)
        self._refresh()

    def state_dict(self) -> dict[str, int]:
        """Where the plan is; the seed is the run's, held by the caller."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, sd: dict[str, int]) -> None:
        self.epoch, self.position = int(sd["epoch"]), int(sd["position"])


class EvalPlan:
    """Evaluation batches of one rank in manifest order: every sample exactly once across ranks, never padded (a
    rank's batch may be empty). A clip that fails to decode is left out of every later pass and reported in
    :attr:`missing` (key → shard and error): evaluation never drops a clip silently."""

    def __init__(self, records: RecordTable, batch_size: int, rank: int, world_size: int) -> None:
        self.records = records
        self.batches = [b.tolist() for b in eval_order(len(records), batch_size, rank, world_size)]
        self.missing: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.batches)

    def key(self, i: int) -> Hashable:
        return i

    def batch(self, i: int) -> list[int]:
        return self.batches[i]

    def plan(self, start: int) -> Iterator[tuple[Hashable, list[int]]]:
        while True:  # every pass is the same
            for i in range(start, len(self.batches)):
                if self.batches[i]:
                    yield i, self.batches[i]
            start = 0

    def exclude(self, bad: dict[int, str], i: int) -> None:
        for j, error in bad.items():
            key, shard = self.records.key(j), self.records.shard(j)
            self.missing[key] = f"{shard}: {error}"
            warnings.warn(f"evaluation clip {key} in {shard} does not decode ({error}): left out, and reported "
                          "with the results", stacklevel=2)
        self.batches = [[j for j in b if j not in bad] for b in self.batches]


def corrupt_error(records: RecordTable, bad: dict[int, str]) -> RuntimeError:
    """The error that stops a run at the first of the corrupt samples ``bad`` (record index → error)."""
    i, error = next(iter(bad.items()))
    rec = records[i]
    return RuntimeError(f"corrupt FLAC member {rec.key}.flac in shard {rec.shard}: {error}")
