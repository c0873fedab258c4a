"""Micro-batching across vehicles and the batch shapes it runs at."""

from __future__ import annotations

import numpy as np
import pytest

from inference.answer import _model_input
from inference.batching import PROBE_EVERY, WAITS_KEPT, WAITS_THAT_PAY, MicroBatcher, Pending
from inference.config import ServeConfig
from schemas.errors import ConfigError
from schemas.sensor import SensorFrame


def item(vid: str, t_consumed: int, partition: int = 0, offset: int = 0) -> Pending:
    frame = SensorFrame(vid, 1, 1, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)
    return Pending.of(frame, None, "s", partition, offset, 0, t_consumed, 10**12)


def test_lone_frame_waits_at_most_max_wait() -> None:
    b = MicroBatcher(max_batch=8, max_wait_ns=2_000_000)
    assert not b.due(0) and b.wait_ns(0) is None
    b.add(item("a", 1_000))
    assert not b.due(1_000 + 1_999_999)
    assert b.wait_ns(1_000 + 500_000) == 1_500_000
    assert b.due(1_000 + 2_000_000)
    assert [p.vehicle_id for p in b.take()] == ["a"]
    assert len(b) == 0


def test_full_batch_is_due_at_once_and_capped() -> None:
    b = MicroBatcher(max_batch=4, max_wait_ns=10**9)
    for i in range(6):
        b.add(item(f"v{i}", 0))
    assert b.due(0) and b.wait_ns(0) == 0
    first = b.take()
    assert [p.vehicle_id for p in first] == ["v0", "v1", "v2", "v3"]
    assert len(b) == 2 and not b.due(1)


def test_zero_wait_sends_every_frame_alone() -> None:
    b = MicroBatcher(max_batch=64, max_wait_ns=0)
    b.add(item("a", 5))
    assert b.due(5)


def one_batch(b: MicroBatcher, t: int, brought_frames: bool | None) -> bool:
    """Start a lone batch at ``t``; True if it waits. ``brought_frames``: the outcome of the
    wait reported to the batcher (None: nothing reported, as when it did not wait)."""
    b.add(item("a", t))
    waits = not b.due(t)
    if waits and brought_frames is not None:
        b.waited(brought_frames)
    b.take()
    return waits


def test_batches_stop_waiting_while_waits_bring_no_frames_and_probe_now_and_then() -> None:
    b = MicroBatcher(max_batch=8, max_wait_ns=500_000)
    assert all(one_batch(b, t, brought_frames=False) for t in range(WAITS_KEPT))
    # the latest waits all came back empty: a lone frame is now due as soon as it arrives
    waited = [one_batch(b, WAITS_KEPT + t, brought_frames=None) for t in range(4 * PROBE_EVERY)]
    assert sum(waited) == 4  # one batch in PROBE_EVERY still waits
    b.add(item("a", 10**6))
    assert b.due(10**6) and b.wait_ns(10**6) == 0


def test_batches_wait_again_once_probes_find_frames_arriving() -> None:
    b = MicroBatcher(max_batch=8, max_wait_ns=500_000)
    for t in range(WAITS_KEPT):
        one_batch(b, t, brought_frames=False)
    t, paid = WAITS_KEPT, 0
    while paid < WAITS_THAT_PAY:  # the rate rises: every wait now brings frames
        paid += one_batch(b, t, brought_frames=True)
        t += 1
    assert t - WAITS_KEPT <= WAITS_THAT_PAY * PROBE_EVERY
    assert all(one_batch(b, t + k, brought_frames=True) for k in range(3 * PROBE_EVERY))


def test_a_batch_keeps_waiting_if_a_few_of_the_latest_waits_brought_frames() -> None:
    b = MicroBatcher(max_batch=8, max_wait_ns=500_000)
    outcomes = [k % (WAITS_KEPT // WAITS_THAT_PAY) == 0 for k in range(WAITS_KEPT)]
    assert sum(outcomes) == WAITS_THAT_PAY
    assert all(one_batch(b, t, brought_frames=o) for t, o in enumerate(outcomes))
    assert one_batch(b, WAITS_KEPT, brought_frames=False)


def test_commit_floor_and_revoke() -> None:
    b = MicroBatcher(max_batch=8, max_wait_ns=10**9)
    b.add(item("a", 0, partition=0, offset=7))
    b.add(item("b", 0, partition=1, offset=3))
    b.add(item("c", 0, partition=0, offset=9))
    assert b.first_offsets() == {("s", 0): 7, ("s", 1): 3}
    gone = b.drop_partitions({("s", 0)})
    assert [p.vehicle_id for p in gone] == ["a", "c"]
    assert b.first_offsets() == {("s", 1): 3}


@pytest.mark.parametrize(
    ("max_batch", "shapes"),
    [(1, (1,)), (8, (1, 2, 4, 8)), (64, (1, 2, 4, 8, 16, 32, 64)), (48, (1, 2, 4, 8, 16, 32, 48))],
)
def test_batch_shapes_are_powers_of_two_up_to_max(max_batch: int, shapes: tuple) -> None:
    cfg = ServeConfig(max_batch=max_batch)
    assert cfg.batch_shapes == shapes
    assert cfg.padded(3) == min(4, max_batch) or max_batch < 3
    assert cfg.padded(max_batch) == max_batch


def test_bad_config_says_what_to_fix() -> None:
    with pytest.raises(ConfigError, match="max_batch"):
        ServeConfig(max_batch=0)
    with pytest.raises(ConfigError, match="device"):
        ServeConfig(device="tpu")
    with pytest.raises(ConfigError, match="linger_ms"):
        ServeConfig(linger_ms=-1)
    for bad in (0, 6):  # idempotent producers allow 1..5 requests in flight
        with pytest.raises(ConfigError, match="max_in_flight"):
            ServeConfig(max_in_flight=bad)


@pytest.mark.parametrize(
    ("picks", "shape"),
    [
        ([(0, 0), (0, 1), (0, 2), (0, 3)], 4),  # a poll's whole block, in order
        ([(0, 0), (0, 1), (0, 2)], 4),  # padded
        ([(0, 1), (0, 3)], 2),  # some of a block's rows (truth windows share it)
        ([(0, 3), (1, 0), (0, 0)], 4),  # two polls' blocks
    ],
)
def test_model_input_is_the_windows_stacked_and_zero_padded(picks: list, shape: int) -> None:
    rng = np.random.default_rng(0)
    blocks = [rng.normal(size=(4, 5, 7)).astype(np.float32) for _ in range(2)]
    x = _model_input([blocks[b] for b, _ in picks], [r for _, r in picks], shape)
    expected = np.zeros((shape, 5, 7), np.float32)
    expected[: len(picks)] = [blocks[b][r] for b, r in picks]
    assert x.dtype == np.float32 and x.shape == expected.shape
    assert np.array_equal(x, expected)
    whole = picks == [(0, r) for r in range(4)]
    assert (x is blocks[0]) == whole  # only the whole block goes uncopied
