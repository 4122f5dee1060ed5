"""Sampling: PSLA weighted draws, rank slices, eval coverage. No decoding."""
import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from torch.utils.data import WeightedRandomSampler

from trainer.data.sampling import epoch_generator, eval_order, train_batches_per_rank, train_order


def test_weighted_frequencies_match_weights():
    w = torch.tensor([0.5, 1.0, 2.0, 4.0, 0.1, 3.0])
    draws = torch.cat([train_order(w, 20000, True, 50, seed=7, epoch=e, rank=0, world_size=1) for e in range(5)])
    observed = np.bincount(draws.numpy(), minlength=len(w))
    p = w.double().numpy()
    expected = p / p.sum() * len(draws)
    assert chisquare(observed, expected).pvalue > 1e-3
    # and a wrong weight vector is rejected by the same test
    assert chisquare(observed, np.full(len(w), len(draws) / len(w))).pvalue < 1e-6


def test_weighted_is_exactly_weighted_random_sampler():
    w = torch.rand(100, dtype=torch.double) + 0.1
    mine = train_order(w, 64, True, 8, seed=3, epoch=2, rank=0, world_size=1)
    ref = list(WeightedRandomSampler(w, 64, replacement=True, generator=epoch_generator(3, 2)))
    assert mine.tolist() == ref


def test_ranks_take_disjoint_slices_of_one_sequence():
    w = torch.rand(50) + 0.1
    full = train_order(w, 103, True, 4, seed=1, epoch=0, rank=0, world_size=1)
    parts = [train_order(w, 103, True, 4, seed=1, epoch=0, rank=r, world_size=2) for r in range(2)]
    n = train_batches_per_rank(103, 4, 2)
    assert [len(p) for p in parts] == [n * 4, n * 4]
    both = train_order(w, n * 8, True, 4, seed=1, epoch=0, rank=0, world_size=1)
    assert torch.equal(torch.stack(parts, 1).reshape(-1), both)  # positions interleave, never overlap
    assert not torch.equal(full[:20], train_order(w, 103, True, 4, seed=1, epoch=1, rank=0, world_size=1)[:20])


def test_uniform_is_a_permutation():
    order = train_order(torch.ones(40), 40, False, 5, seed=0, epoch=0, rank=0, world_size=1)
    assert sorted(order.tolist()) == list(range(40))
    r = [set(train_order(torch.ones(40), 40, False, 5, 0, 0, k, 2).tolist()) for k in range(2)]
    assert not r[0] & r[1] and r[0] | r[1] == set(range(40))


@pytest.mark.parametrize("n,world,b", [(65, 2, 32), (10, 3, 4), (1, 2, 8), (64, 2, 32)])
def test_eval_every_sample_once_equal_batch_counts(n, world, b):
    per_rank = [eval_order(n, b, r, world) for r in range(world)]
    assert len({len(p) for p in per_rank}) == 1
    seen = sorted(i for p in per_rank for batch in p for i in batch.tolist())
    assert seen == list(range(n))
    assert all(len(batch) <= b for p in per_rank for batch in p)
