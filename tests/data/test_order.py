"""The one iteration-keyed sampler (`resnetlab.data.order`) shared by every training source."""

import numpy as np
import torch

from resnetlab.data.order import IterationSampler, mix_seed


def test_a_batch_is_a_function_of_the_iteration_only():
    full = IterationSampler(50, 8, seed=5)
    resumed = IterationSampler(50, 8, seed=5)
    assert all(torch.equal(full.indices(it), resumed.indices(it)) for it in (17, 3, 0, 12))
    resumed.start_iter = 9
    stream = iter(resumed)
    assert all(torch.equal(next(stream), full.indices(it)) for it in range(9, 20))


def test_epochs_are_permutations_without_the_incomplete_batch():
    s = IterationSampler(50, 8, seed=0)
    assert s.iters_per_epoch == 6
    for epoch in range(3):
        seen = torch.cat([s.indices(epoch * 6 + k) for k in range(6)])
        assert len(set(seen.tolist())) == 48  # 50 // 8 batches, all distinct
    assert not torch.equal(s.epoch_order(0), s.epoch_order(1))


def test_ranks_split_the_global_batch_and_draws_do_not_depend_on_the_world_size():
    solo = IterationSampler(40, 8, seed=2)
    ranks = [IterationSampler(40, 8, seed=2, rank=r, world_size=2) for r in range(2)]
    for it in range(7):
        assert torch.equal(torch.cat([r.indices(it) for r in ranks]), solo.indices(it))
        draws = torch.rand(8, generator=solo.augment_generator(it))
        assert torch.equal(torch.rand(8, generator=ranks[1].augment_generator(it))[ranks[1].rows], draws[4:])


def test_seeds_never_share_an_order():
    """`mix_seed` against numpy's SeedSequence as the independent reference of a good mixer: both
    give distinct seeds for every (seed, stream, epoch) in a grid where `seed * K + epoch` collides."""
    keys = [(seed, 1, epoch) for seed in range(20) for epoch in range(20)]
    ours = {mix_seed(*k) for k in keys}
    theirs = {int(np.random.SeedSequence(list(k)).generate_state(1, np.uint64)[0]) for k in keys}
    assert len(ours) == len(theirs) == len(keys)
    assert len({seed * 10 + epoch for seed, _, epoch in keys}) < len(keys)  # the old scheme's collisions
    orders = {tuple(IterationSampler(30, 5, seed=s).epoch_order(e).tolist()) for s in range(6) for e in range(6)}
    assert len(orders) == 36
