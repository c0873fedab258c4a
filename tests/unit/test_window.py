"""The window contract shared by trainer, serving, report and importer evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from inference.history import HistoryStore
from schemas import window
from schemas.model_spec import DEFAULT_SPEC
from schemas.sensor import SensorFrame
from trainer.config import WindowConfig
from trainer.windowing import Windower

S = window.NS


def test_rows_are_relative_to_the_newest_frame_at_full_precision():
    t0 = 1_700_000_000 * S  # an epoch in ns: float32 alone would lose milliseconds
    rows = [(t0 + k * S // 10, k, 0, 1, 0, 0, 0) for k in range(3)]
    out = window.window_rows(rows)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], [-0.2, -0.1, 0.0], atol=1e-7)
    np.testing.assert_array_equal(out[:, 1], [0, 1, 2])


def test_gap_test_uses_the_spec_limit():
    assert not window.has_gap([0, S // 10, 2 * S // 10], 0.35)
    assert window.has_gap([0, S // 10, S // 2], 0.35)
    assert not window.has_gap([5], 0.35)


def test_labels_interpolate_in_time_not_by_index_and_never_across_a_gap():
    # irregular track: 0, 0.1, 0.35, 0.4 s at 10 m/s along x, then a 2 s gap
    t = np.array([0, 1, 3.5, 4, 24]) * S // 10
    x = t / S * 10.0
    pos, ok = window.labels(t, x, np.zeros(len(t)), [0, S // 10], (0.2, 0.3))
    assert ok.tolist() == [True, True]
    np.testing.assert_allclose(pos[..., 0], [[2.0, 3.0], [3.0, 4.0]])
    _, ok = window.labels(t, x, np.zeros(len(t)), [S // 10], (1.0,))
    assert not ok[0]  # 1.1 s falls in the 2 s gap
    _, ok = window.labels(t, x, np.zeros(len(t)), [0], (3.0,))
    assert not ok[0]  # beyond the track


@pytest.mark.parametrize("jitter_ms", [0, 20])
def test_trainer_and_serving_build_the_same_window_and_label(jitter_ms):
    """The contract in use: a Windower sample and a HistoryStore truth entry agree."""
    rng = np.random.default_rng(1)
    frames, t = [], 0
    for k in range(80):
        t += S // 10 + int(rng.integers(-jitter_ms, jitter_ms + 1)) * 1_000_000
        frames.append(SensorFrame("v", k, t, 3.0 * t / S, np.sin(t / S), 3.0, 0.1, 0.0, 0.0))
    win = Windower(DEFAULT_SPEC, WindowConfig(holdout_fraction=0.0))
    samples = win.add_many(frames)
    store = HistoryStore(DEFAULT_SPEC, truth_every=1)
    for f in frames:
        store.add_frame(f, 0)
    windows, targets = store.truth()
    by_anchor = {int(s.window[-1, 1] * 1000): s for s in samples}
    matched = 0
    for w, target in zip(windows, targets, strict=True):
        s = by_anchor.get(int(w[-1, 1] * 1000))
        if s is not None:
            np.testing.assert_allclose(w, s.window, atol=1e-6)
            np.testing.assert_allclose(target, s.target, atol=1e-5)
            matched += 1
    assert matched >= 30


def test_serving_truth_is_the_trainers_label_bit_for_bit_at_epoch_times():
    """Epoch nanoseconds do not fit float64 exactly: labels must read the track on its
    integer times on both sides, or serving's truth drifts from what the trainer learns."""
    rng = np.random.default_rng(3)
    frames, t = [], 1_700_000_000 * S + 123_456_789
    for k in range(120):
        t += S // 10 + int(rng.integers(-20, 21)) * 1_000_000 + int(rng.integers(0, 999))
        x = 11.0 * (t - 1_700_000_000 * S) / S
        frames.append(SensorFrame("v", k, t, x, 5.0 * np.sin(k / 7), 11.0, 0.2, 0.0, 0.0))
    samples = Windower(DEFAULT_SPEC, WindowConfig(holdout_fraction=0.0)).add_many(frames)
    store = HistoryStore(DEFAULT_SPEC, truth_every=1)
    for f in frames:
        store.add_frame(f, 0)
    windows, targets = store.truth()
    by_anchor = {s.window[-1, 1].tobytes(): s for s in samples}
    matched = 0
    for w, target in zip(windows, targets, strict=True):
        s = by_anchor.get(w[-1, 1].tobytes())
        if s is not None:
            np.testing.assert_array_equal(w, s.window)
            np.testing.assert_array_equal(target, s.target)
            matched += 1
    assert matched >= 60


def test_labels_on_many_tracks_are_the_single_track_labels_bit_for_bit():
    rng = np.random.default_rng(0)
    steps = np.array([S // 10, S // 10 + 1, S // 3, S // 100, 7 * S // 10, 1])
    for _ in range(400):
        n = int(rng.integers(0, 30))
        t = 1_700_000_000 * S + np.cumsum(rng.choice(steps, n) * rng.integers(1, 3, n))
        x, y = rng.normal(size=n) * 1e3, rng.normal(size=n) * 1e5
        if n and rng.random() < 0.5:  # anchors on track points, or anywhere
            anchors = t[rng.integers(0, n, 3)] + rng.integers(-S, S, 3) * (rng.random() < 0.5)
        else:
            anchors = 1_700_000_000 * S + rng.integers(0, 30 * S, 3)
        horizons = (0.5, 1.0, 2.0, 3.0) if rng.random() < 0.7 else (0.1, 0.25)
        want, want_ok = window.labels(t, x, y, anchors, horizons)
        width = max(n + int(rng.integers(0, 5)), 1)  # padded with junk past each track
        tt = rng.integers(-(10**18), 10**18, (3, width))
        xx, yy = rng.normal(size=(3, width)), rng.normal(size=(3, width))
        tt[:, :n], xx[:, :n], yy[:, :n] = t, x, y
        got, ok = window.labels_on_tracks(tt, xx, yy, [n] * 3, anchors, horizons)
        np.testing.assert_array_equal(ok, want_ok)
        np.testing.assert_array_equal(got, want)
