"""One seeding module: the same path gives the same draws, distinct paths independent ones."""
import numpy as np
import torch

from trainer.data.seeding import AUGMENT, SAMPLING, STEP, numpy_rng, torch_generator, torch_seed


def test_same_path_same_draws_other_paths_differ():
    assert torch_seed(3, STEP, 1, 7, 0) == torch_seed(3, STEP, 1, 7, 0)
    assert 0 <= torch_seed(3, STEP, 1, 7, 0) < 2**63
    np.testing.assert_array_equal(numpy_rng(3, AUGMENT, 1, 7, 0).random(4), numpy_rng(3, AUGMENT, 1, 7, 0).random(4))
    assert torch.equal(torch.randperm(50, generator=torch_generator(3, SAMPLING, 2)),
                       torch.randperm(50, generator=torch_generator(3, SAMPLING, 2)))
    seeds = {torch_seed(s, kind, e, st, r) for s in (0, 1) for kind in (AUGMENT, STEP) for e in range(3)
             for st in range(200) for r in range(4)}
    assert len(seeds) == 2 * 2 * 3 * 200 * 4  # no two (seed, kind, epoch, step, rank) share a stream


def test_no_collision_where_a_linear_formula_collides():
    # seed·1_000_003 + epoch·10_007 + step·101 + rank gave epoch 0 step 100 rank 0 the seed of epoch 1 step 0 rank 93
    assert torch_seed(0, STEP, 0, 100, 0) != torch_seed(0, STEP, 1, 0, 93)
