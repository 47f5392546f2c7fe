"""The step planner: ``plan_epoch`` (one global plan per epoch), its length balancing, and ``StepBatchSampler``
(this rank's micro-batches, resumable mid-epoch through torchdata's StatefulDataLoader)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from torchdata.stateful_dataloader import StatefulDataLoader

from datamodules.batching import (
    ExampleDataset,
    SFTCollator,
    StepBatchSampler,
    _balanced_split,
    build_example,
    plan_epoch,
)
from skill_distill.io import ConfigError

LENGTHS = [int(x) for x in np.random.default_rng(0).integers(20, 400, size=53)]


def test_plan_covers_each_example_once_and_drops_the_remainder():
    plan = plan_epoch(LENGTHS, examples_per_step=8, world_size=2, micro_batches_per_step=2, seed=42, epoch=0)
    assert len(plan) == 53 // 8
    used = [i for step in plan for rank in step for mb in rank for i in mb]
    assert len(used) == len(set(used)) == 6 * 8  # 5 examples left over, none twice
    for step in plan:
        assert len(step) == 2 and all(len(rank) == 2 and all(len(mb) == 2 for mb in rank) for rank in step)
    assert plan == plan_epoch(LENGTHS, 8, 2, 2, seed=42, epoch=0)  # deterministic in (seed, epoch)
    assert plan != plan_epoch(LENGTHS, 8, 2, 2, seed=42, epoch=1)
    unshuffled = plan_epoch(LENGTHS, 8, 2, 2, seed=42, epoch=3, shuffle=False)
    assert sorted(i for rank in unshuffled[0] for mb in rank for i in mb) == list(range(8))
    with pytest.raises(ConfigError, match="examples_per_step=8 must be divisible"):
        plan_epoch(LENGTHS, 8, 3, 1, seed=0, epoch=0)
    with pytest.raises(ConfigError, match="accumulate_grad_batches"):
        plan_epoch(LENGTHS, 8, 2, 3, seed=0, epoch=0)


def test_length_balancing_equal_sizes_and_optimal_loads_on_small_cases():
    assert sorted(map(sorted, _balanced_split([0, 1, 2, 3, 4, 5], [10, 9, 8, 1, 1, 1], 2))) == [[0, 3, 4], [1, 2, 5]]
    rng = np.random.default_rng(1)
    excess_greedy = excess_unbalanced = 0
    for _ in range(200):
        lengths = [int(x) for x in rng.integers(1, 1000, size=8)]
        groups = _balanced_split(list(range(8)), lengths, 2)
        assert sorted(map(len, groups)) == [4, 4] and sorted(sum(groups, [])) == list(range(8))
        greedy = max(sum(lengths[i] for i in g) for g in groups)
        best = min(max(sum(lengths[i] for i in a), sum(lengths) - sum(lengths[i] for i in a))
                   for a in itertools.combinations(range(8), 4))
        assert best <= greedy <= best + max(lengths)
        excess_greedy += greedy - best
        excess_unbalanced += max(sum(lengths[:4]), sum(lengths[4:])) - best  # the split without balancing
    assert excess_greedy < excess_unbalanced / 4


def _examples(n: int):
    return [build_example(f"e{i}", list(range(1, 4)), list(range(5, 5 + LENGTHS[i] % 7 + 1)), 64) for i in range(n)]


def test_rank_shares_partition_each_step_and_carry_its_token_count():
    examples = _examples(40)
    lengths, supervised = [len(e.input_ids) for e in examples], [e.num_supervised for e in examples]
    samplers = [StepBatchSampler(lengths, supervised, 8, 2, rank, 2, seed=3) for rank in (0, 1)]
    assert len(samplers[0]) == 5 * 2 and samplers[0].steps_per_epoch() == 5
    batches = [list(s) for s in samplers]
    plan = plan_epoch(lengths, 8, 2, 2, seed=3, epoch=0)
    for step in range(5):
        mine = [[i for i, _ in mb] for r in (0, 1) for mb in batches[r][2 * step: 2 * step + 2]]
        assert sorted(sum(mine, [])) == sorted(i for rank in plan[step] for mb in rank for i in mb)
        tokens = {t for r in (0, 1) for mb in batches[r][2 * step: 2 * step + 2] for _, t in mb}
        assert tokens == {sum(supervised[i] for i in sum(mine, []))}  # the whole step's, on both ranks
    samplers[0].set_epoch(1)
    assert list(samplers[0]) != batches[0] and samplers[0].sampler is samplers[0]


def test_stateful_loader_resumes_mid_epoch_with_the_same_batches():
    examples = _examples(32)
    lengths, supervised = [len(e.input_ids) for e in examples], [e.num_supervised for e in examples]

    def loader():
        return StatefulDataLoader(ExampleDataset(examples), batch_sampler=StepBatchSampler(
            lengths, supervised, 4, 1, 0, 2, seed=5), collate_fn=SFTCollator(0, packing=True))

    full = [b["example_ids"] for b in loader()]
    first = loader()
    it = iter(first)
    head = [next(it)["example_ids"] for _ in range(5)]
    state = first.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    assert head + [b["example_ids"] for b in resumed] == full
