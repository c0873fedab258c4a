"""Per-vehicle windows in the model's layout, ground truth, rebalance drops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inference.history import HistoryStore
from schemas.model_spec import InputSpec
from schemas.sensor import SensorFrame

SPEC = InputSpec()
DT_NS = 100_000_000  # 10 Hz


def straight(vid: str, n: int, v: float = 10.0, heading: float = 0.3, t0: int = 0):
    for i in range(n):
        t = i * DT_NS / 1e9
        yield SensorFrame(
            vid,
            i,
            t0 + i * DT_NS,
            v * math.cos(heading) * t,
            v * math.sin(heading) * t,
            v,
            heading,
            0.0,
            0.0,
        )


def test_window_layout_matches_input_spec() -> None:
    store = HistoryStore(SPEC)
    frames = list(straight("a", 12))
    for f in frames[: SPEC.history - 1]:
        store.add_frame(f, 0)
        assert store.window("a") is None  # still warming up
    for f in frames[SPEC.history - 1 :]:
        store.add_frame(f, 0)
    w = store.window("a")
    assert w is not None and w.shape == (SPEC.history, 7) and w.dtype == np.float32
    assert w[-1, 0] == 0.0 and w[0, 0] == pytest.approx(-0.9)  # dt, oldest first
    assert w[-1, 1] == pytest.approx(frames[-1].x) and w[0, 1] == pytest.approx(frames[2].x)
    assert list(w[-1, 3:]) == pytest.approx([10.0, 0.3, 0.0, 0.0])


def test_duplicates_are_not_appended() -> None:
    store = HistoryStore(SPEC)
    frames = list(straight("a", 10))
    for f in frames:
        assert store.add_frame(f, 0) == "ok"
    assert store.add_frame(frames[5], 0) == "out_of_order"
    assert store.window("a") is not None and store.unusable("a") is None


def test_a_gap_wider_than_the_specs_max_gap_makes_windows_unusable_until_it_slides_out() -> None:
    spec = InputSpec(max_gap_s=0.35)
    store = HistoryStore(spec, truth_every=1)
    frames = list(straight("a", 10))
    for f in frames:
        store.add_frame(f, 0)
    t = frames[-1].t_event_ns + 400_000_000  # 0.4 s > 0.35 s
    assert store.add_frame(SensorFrame("a", 10, t, 0, 0, 1, 0, 0, 0), 0) == "gap"
    for i in range(1, spec.history):
        assert store.unusable("a") == "gap", i
        store.add_frame(SensorFrame("a", 10 + i, t + i * DT_NS, 0, 0, 1, 0, 0, 0), 0)
    assert store.unusable("a") is None  # the gap left the window


def test_the_gap_limit_follows_the_serving_models_spec() -> None:
    store = HistoryStore(InputSpec(max_gap_s=0.35))
    for i, f in enumerate(straight("a", 12)):
        t = f.t_event_ns + (300_000_000 if i >= 5 else 0)  # one 0.4 s step
        store.add_frame(SensorFrame("a", f.seq, t, f.x, f.y, 10.0, 0.3, 0, 0), 0)
    assert store.unusable("a") == "gap"
    store.set_spec(InputSpec(max_gap_s=0.5))  # a model trained with wider gaps
    assert store.unusable("a") is None


def test_ground_truth_is_interpolated_future_positions() -> None:
    store = HistoryStore(SPEC, truth_every=1)
    for f in straight("a", 60, v=10.0, heading=0.3):
        store.add_frame(f, 0)
    windows, targets = store.truth()
    assert len(windows) > 10 and targets.shape[1:] == (len(SPEC.horizons_s), 2)
    for w, tgt in zip(windows, targets, strict=True):
        x, y = w[-1, 1], w[-1, 2]
        for h, (tx, ty) in zip(SPEC.horizons_s, tgt, strict=True):
            assert tx == pytest.approx(x + 10 * math.cos(0.3) * h, abs=1e-3)
            assert ty == pytest.approx(y + 10 * math.sin(0.3) * h, abs=1e-3)


def test_revoked_partitions_drop_their_vehicles_only() -> None:
    store = HistoryStore(SPEC)
    for f in straight("a", 10):
        store.add_frame(f, 0)
    for f in straight("b", 10):
        store.add_frame(f, 1)
    assert store.drop_partitions({0}) == 1
    assert store.window("a") is None and store.window("b") is not None
    for f in straight("a", 3, t0=10**10):
        store.add_frame(f, 2)
    assert store.window("a") is None  # new owner warms up again
