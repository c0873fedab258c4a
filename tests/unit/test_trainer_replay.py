"""Replay buffer reuse bound: no sample is drawn more than ``max_reuse`` times, and the
draw budget paces a slow stream into small batches instead of bursts of repeats."""

from __future__ import annotations

import numpy as np
import pytest

from schemas.model_spec import DEFAULT_SPEC
from trainer.replay import ReplayBuffer
from trainer.windowing import Sample


def sample(i: int) -> Sample:
    window = np.full((DEFAULT_SPEC.history, 7), float(i), np.float32)
    target = np.full((len(DEFAULT_SPEC.horizons_s), 2), float(i), np.float32)
    return Sample("v", i, i, i, window, target, holdout=False)


@pytest.mark.parametrize("max_reuse", [1, 3, 8])
def test_no_sample_is_drawn_more_than_max_reuse_times(max_reuse: int) -> None:
    buf = ReplayBuffer(DEFAULT_SPEC, capacity=50, max_reuse=max_reuse, seed=1)
    draws: dict[int, int] = {}
    added = 0
    for step in range(400):  # one new sample every other step, 20 steps of 64 asked
        if step % 2 == 0:
            buf.add([sample(added)])
            added += 1
        batch = buf.sample(64, fresh_fraction=0.5)
        ids = batch.windows[:, 0, 0].astype(int).tolist()
        assert len(ids) == len(set(ids)), "a batch repeats a sample"
        for i in ids:
            draws[i] = draws.get(i, 0) + 1
    assert max(draws.values()) <= max_reuse
    assert sum(draws.values()) <= max_reuse * added
    # the budget is spent: samples that stayed in the buffer are used up to the bound
    assert sum(draws.values()) >= max_reuse * (added - 5)
    assert int(buf.uses().max()) <= max_reuse


def test_budget_paces_draws_and_counts_fresh_samples_once() -> None:
    buf = ReplayBuffer(DEFAULT_SPEC, capacity=100, max_reuse=4, seed=0)
    assert len(buf.sample(64, 0.5)) == 0, "no data: an empty batch"
    buf.add([sample(i) for i in range(10)])
    first = buf.sample(64, 0.5)
    assert len(first) == 10 and first.fresh == 10, "all distinct, all new"
    assert [len(buf.sample(64, 0.5)) for _ in range(4)] == [10, 10, 10, 0], "4 x 10 draws"
    buf.add([sample(10), sample(11)])  # two new samples buy 2 x max_reuse draws
    batch = buf.sample(64, 0.5)
    assert len(batch) == 2 and batch.fresh == 2
    assert batch.windows[0, 0, 0] == 11.0, "the newest untrained sample comes first"
    assert sum(len(buf.sample(64, 0.5)) for _ in range(5)) == 6, "then the rest of the budget"
