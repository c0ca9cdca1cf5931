"""The step-indexed data order: epochs are permutations, ranks partition the global batch, resuming replays."""

import itertools

import pytest

from lincorrupt.train import StepBatchSampler
from lincorrupt.train.data_order import derive_seed


def take(sampler, k):
    return list(itertools.islice(iter(sampler), k))


def test_each_epoch_visits_every_kept_index_once_and_epochs_differ():
    n, B = 23, 5
    s = StepBatchSampler(n, B, seed=3)
    batches = take(s, 2 * s.steps_per_epoch)
    e0 = [i for b in batches[:s.steps_per_epoch] for i in b]
    e1 = [i for b in batches[s.steps_per_epoch:] for i in b]
    assert len(set(e0)) == len(e0) == (n // B) * B and set(e0) <= set(range(n))
    assert len(set(e1)) == len(e1) and e0 != e1


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_partition_the_global_batch(world_size):
    n, B = 40, 8
    single = take(StepBatchSampler(n, B, seed=1), 12)
    per_rank = [take(StepBatchSampler(n, B, rank=r, world_size=world_size, seed=1), 12) for r in range(world_size)]
    for step in range(12):
        assert sum((per_rank[r][step] for r in range(world_size)), []) == single[step]
        assert single[step] == StepBatchSampler(n, B, seed=1).global_batch(step).tolist()


def test_starting_at_a_step_replays_the_same_order():
    full = take(StepBatchSampler(30, 4, seed=0), 20)
    assert take(StepBatchSampler(30, 4, seed=0, start_step=13), 7) == full[13:]
    assert take(StepBatchSampler(30, 4, seed=1), 20) != full


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        StepBatchSampler(3, 8)
    with pytest.raises(ValueError, match="not divisible by the number of processes 3"):
        StepBatchSampler(30, 8, world_size=3)


def test_derived_seeds_differ():
    seeds = {derive_seed(0, step) for step in range(1000)} | {derive_seed(1, 0), derive_seed(0, 0, 1)}
    assert len(seeds) == 1002 and all(0 <= s < 2 ** 63 for s in seeds)
