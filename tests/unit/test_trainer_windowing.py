"""Windowing: delayed labels, time interpolation, gaps, late and duplicate frames, holdout."""

from __future__ import annotations

import math

import numpy as np

from schemas.kinematics import predict_ctrv, predict_cv
from schemas.model_spec import InputSpec
from schemas.sensor import SensorFrame
from trainer.config import TrainConfig, WindowConfig
from trainer.metrics import OnlineMetrics, constant_velocity, ctrv
from trainer.windowing import NS, Windower, is_holdout

SPEC = InputSpec(history=4, horizons_s=(0.5, 1.0))
T0 = 1_000 * NS


def circle_frame(t_s: float, vid: str = "v1", speed: float = 10.0, w: float = 0.2) -> SensorFrame:
    """Constant speed and turn rate around the origin: the exact CTRV motion."""
    h = w * t_s
    r = speed / w
    heading = math.atan2(math.sin(h), math.cos(h))
    x, y = r * math.sin(h), r * (1 - math.cos(h))
    return SensorFrame(vid, round(t_s * 100), T0 + round(t_s * NS), x, y, speed, heading, w, 0.0)


def feed(win: Windower, times: list[float], **kw: float) -> list:
    out = []
    for t in times:
        out.extend(win.add(circle_frame(t, **kw), produced_ns=round(t * NS)))
    return out


def test_sample_emitted_only_once_label_time_arrives() -> None:
    win = Windower(SPEC)
    # 0.0 .. 1.2: the first full history ends at 0.3, whose label time 1.3 has not arrived
    assert feed(win, [i * 0.1 for i in range(13)]) == []
    assert [s.t_anchor_ns for s in feed(win, [1.3])] == [T0 + round(0.3 * NS)]
    assert [s.t_anchor_ns for s in feed(win, [1.4])] == [T0 + round(0.4 * NS)]


def test_window_layout_matches_model_spec_contract() -> None:
    win = Windower(SPEC)
    (s, *_) = feed(win, [i * 0.1 for i in range(14)])
    assert s.window.shape == (4, 7) and s.window.dtype == np.float32
    np.testing.assert_allclose(s.window[:, 0], [-0.3, -0.2, -0.1, 0.0], atol=1e-6)
    newest = circle_frame(0.3)
    np.testing.assert_allclose(s.window[-1, 1:3], [newest.x, newest.y], rtol=1e-6)
    assert s.t_label_ns == T0 + round(1.3 * NS)


def test_irregular_frames_interpolate_labels_in_time_not_by_index() -> None:
    win = Windower(InputSpec(history=4, horizons_s=(0.5, 1.0), max_gap_s=0.5))
    times = [0.0, 0.07, 0.21, 0.3, 0.44, 0.62, 0.79, 0.93, 1.12, 1.27, 1.41, 1.55]
    samples = feed(win, times)
    assert samples
    for s in samples:
        t_anchor = (s.t_anchor_ns - T0) / NS
        for k, h in enumerate(SPEC.horizons_s):
            truth = circle_frame(t_anchor + h)
            # linear interpolation of a 10 m/s circle over <= 0.19 s: error well under 5 cm
            assert np.hypot(*(s.target[k] - (truth.x, truth.y))) < 0.05


def test_delayed_frames_fill_in_and_late_frames_are_not_emitted_twice() -> None:
    win = Windower(SPEC, WindowConfig(allowed_lateness_s=0.3))
    times = [i * 0.1 for i in range(30)]
    order = times.copy()
    order[5], order[7] = order[7], order[5]  # 0.5 arrives two frames late
    order.insert(25, order.pop(9))  # 0.9 arrives 1.6 s late, after its own anchor was emitted
    got = feed(win, order)
    ref = feed(Windower(SPEC, WindowConfig(allowed_lateness_s=0.3)), times)
    anchors = [s.t_anchor_ns for s in got]
    assert len(anchors) == len(set(anchors)), "an anchor was emitted twice"
    assert anchors == sorted(anchors)
    by_anchor = {s.t_anchor_ns: s for s in ref}
    within_lateness = [s for s in got if s.t_anchor_ns < T0 + round(0.35 * NS)]
    assert within_lateness, "0.5 s was late by less than the allowed lateness"
    for s in within_lateness:  # identical to the in-order stream
        np.testing.assert_array_equal(s.window, by_anchor[s.t_anchor_ns].window)
        np.testing.assert_array_equal(s.target, by_anchor[s.t_anchor_ns].target)
    for s in got:  # beyond it, labels are still interpolated in time (2 cm on this circle)
        t_anchor = (s.t_anchor_ns - T0) / NS
        truth = np.array(
            [[circle_frame(t_anchor + h).x, circle_frame(t_anchor + h).y] for h in SPEC.horizons_s]
        )
        assert np.abs(s.target - truth).max() < 0.02
    assert win.stats.too_late >= 1
    assert len(got) >= len(ref) - 4


def test_duplicates_are_ignored() -> None:
    win = Windower(SPEC)
    times = [i * 0.1 for i in range(15)]
    a = feed(win, times)
    b = feed(win, times)
    assert len(a) == 2 and b == []
    assert win.stats.duplicates + win.stats.too_late == len(times)


def test_gaps_skip_samples_instead_of_bridging_them() -> None:
    spec = InputSpec(history=4, horizons_s=(0.5, 1.0), max_gap_s=0.25)
    win = Windower(spec, WindowConfig(max_label_gap_s=0.25))
    times = [round(i * 0.1, 1) for i in range(40) if not 10 <= i < 15]  # 0.9 -> 1.5 missing
    samples = feed(win, times)
    gap_lo, gap_hi = T0 + round(0.9 * NS), T0 + round(1.5 * NS)
    for s in samples:
        hist_start = s.t_anchor_ns - round(0.3 * NS)
        assert not (hist_start < gap_hi and s.t_anchor_ns > gap_lo), "history spans the gap"
        for h in SPEC.horizons_s:
            label_t = s.t_anchor_ns + round(h * NS)
            assert not gap_lo < label_t < gap_hi, "label interpolated across the gap"
    assert win.stats.skipped_history > 0 and win.stats.skipped_label > 0
    assert len(samples) > 10


def test_holdout_is_deterministic_and_near_fraction() -> None:
    ids = [f"veh-{i}" for i in range(2000)]
    first = [is_holdout(v, 0.2) for v in ids]
    assert first == [is_holdout(v, 0.2) for v in ids]
    assert 0.15 < sum(first) / len(ids) < 0.25
    assert not any(is_holdout(v, 0.0) for v in ids)


def test_buffer_stays_bounded_per_vehicle() -> None:
    win = Windower(SPEC)
    feed(win, [i * 0.1 for i in range(500)])
    assert len(win._vehicles["v1"].times) <= SPEC.history + 12


def test_ctrv_is_exact_on_circles_and_cv_is_not() -> None:
    win = Windower(SPEC, WindowConfig(holdout_fraction=0.0))
    samples = feed(win, [i * 0.1 for i in range(30)])
    windows = np.stack([s.window for s in samples])
    targets = np.stack([s.target for s in samples])
    metrics = OnlineMetrics(SPEC.horizons_s)
    preds = {
        "model": constant_velocity(windows, SPEC.horizons_s),
        "cv": constant_velocity(windows, SPEC.horizons_s),
        "ctrv": ctrv(windows, SPEC.horizons_s),
    }
    metrics.update(np.zeros(len(samples), bool), targets, preds)
    summary = metrics.summary()
    assert summary["train.ctrv.fde@1"] < 0.01 < summary["train.cv.fde@1"]
    assert summary["train.cv.ade@1"] < summary["train.cv.fde@1"]
    assert "holdout.cv.fde@1" not in summary


def test_idle_vehicles_are_evicted() -> None:
    win = Windower(SPEC)
    feed(win, [0.0, 0.1], vid="old")
    feed(win, [100.0, 100.1], vid="new")
    assert win.evict_idle(win.newest_ns - 60 * NS) == 1 and len(win) == 1


def test_history_gap_limit_is_the_model_specs_one_source_of_truth() -> None:
    times = [0.0, 0.1, 0.5, 0.6] + [round(0.6 + 0.1 * i, 1) for i in range(1, 12)]  # 0.4 s gap
    strict = feed(Windower(InputSpec(history=4, horizons_s=(0.5, 1.0), max_gap_s=0.35)), times)
    loose = feed(Windower(InputSpec(history=4, horizons_s=(0.5, 1.0), max_gap_s=0.45)), times)
    first = T0 + round(0.6 * NS)  # history 0.0, 0.1, 0.5, 0.6 crosses the gap
    assert first not in [s.t_anchor_ns for s in strict]
    assert first in [s.t_anchor_ns for s in loose]
    # no second knob in the trainer config that could disagree with serving
    assert not any("gap" in f and "label" not in f for f in TrainConfig.__dataclass_fields__)


def test_baselines_are_schemas_kinematics_including_the_straight_threshold() -> None:
    rng = np.random.default_rng(1)
    windows = rng.normal(size=(64, 4, 7)).astype(np.float32)
    windows[:, -1, 3] = 20.0  # m/s
    windows[:, -1, 5] = rng.uniform(-9e-4, 9e-4, size=64)  # near-straight: CV in kinematics
    windows[:8, -1, 5] = [0.3, -0.2, 2e-3, -5e-3, 0.0, 1e-4, 5e-4, -5e-4]
    last = windows[:, -1, :].astype(np.float64)
    args = (last[:, 1], last[:, 2], last[:, 3], last[:, 4])
    np.testing.assert_allclose(
        ctrv(windows, SPEC.horizons_s), predict_ctrv(*args, last[:, 5], SPEC.horizons_s), atol=1e-5
    )
    np.testing.assert_allclose(
        constant_velocity(windows, SPEC.horizons_s), predict_cv(*args, SPEC.horizons_s), atol=1e-5
    )
