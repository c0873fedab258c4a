"""The ground-truth ring: the newest rows, oldest first, the same as a bounded deque."""

from __future__ import annotations

import random
from collections import deque

import numpy as np
import pytest

from inference.truth import TruthRing


def _rows(n: int, start: int, t: int = 3, k: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows whose every value is their number: easy to follow through the ring."""
    ids = np.arange(start, start + n, dtype=np.float32)
    windows = np.broadcast_to(ids[:, None, None], (n, t, 7)).copy()
    targets = np.broadcast_to(ids[:, None, None], (n, k, 2)).copy()
    preds = np.where(ids % 3 == 0, np.nan, -ids)[:, None, None] * np.ones((n, k, 2), np.float32)
    return windows, targets, preds.astype(np.float32)


@pytest.mark.parametrize("capacity", [1, 5, 64])
def test_the_ring_holds_what_a_bounded_deque_would(capacity: int) -> None:
    rng = random.Random(capacity)
    ring, ref = TruthRing(capacity), deque[tuple[int, float]](maxlen=capacity)
    start = 0
    for step in range(60):
        n = rng.choice([0, 1, 2, 3, capacity, capacity + 4])
        when = float(step)
        ring.append(*_rows(n, start), when)
        ref.extend((i, when) for i in range(start, start + n))
        start += n
        since = rng.choice([None, when - 2.5, when + 1])
        got = ring.recent(since)
        want = [i for i, w in ref if since is None or w >= since]
        if start == 0:
            assert got is None
            continue
        assert got is not None
        windows, targets, preds = got
        assert windows[:, 0, 0].tolist() == want == targets[:, 0, 0].tolist()
        assert len(ring) == len(ref)
        want_preds = [np.nan if i % 3 == 0 else -i for i in want]  # NaN: nothing answered
        np.testing.assert_array_equal(preds[:, 0, 0], np.array(want_preds, np.float32))


def test_what_it_returns_is_a_copy() -> None:
    ring = TruthRing(4)
    ring.append(*_rows(3, 0), 1.0)
    got = ring.recent()
    assert got is not None
    got[0][:] = 99.0
    again = ring.recent()
    assert again is not None and again[0][:, 0, 0].tolist() == [0.0, 1.0, 2.0]


def test_shapes_are_checked_and_clear_forgets_them() -> None:
    ring = TruthRing(4)
    ring.append(*_rows(2, 0, t=3), 1.0)
    with pytest.raises(ValueError, match="differ from the stored"):
        ring.append(*_rows(1, 2, t=5), 2.0)
    windows, targets, preds = _rows(2, 0)
    with pytest.raises(ValueError, match="2 windows, 1 targets"):
        ring.append(windows, targets[:1], preds, 2.0)
    ring.clear()
    assert ring.recent() is None and len(ring) == 0
    ring.append(*_rows(1, 7, t=5), 3.0)  # a new spec: a new window length
    got = ring.recent()
    assert got is not None and got[0].shape == (1, 5, 7)


def test_a_capacity_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="capacity"):
        TruthRing(0)
