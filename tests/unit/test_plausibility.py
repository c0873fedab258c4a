"""One implausible frame never poisons a vehicle's history, in serving or in training."""

from __future__ import annotations

from inference.history import HistoryStore
from schemas import plausibility
from schemas.model_spec import DEFAULT_SPEC
from schemas.sensor import SensorFrame
from trainer.config import WindowConfig
from trainer.windowing import Windower

S = 10**9
FUTURE = 10**18  # ~2001 years of ns after the stream's clock


def frame(seq: int, t_ns: int, x: float | None = None) -> SensorFrame:
    return SensorFrame("car", seq, t_ns, 10.0 * t_ns / S if x is None else x, 0.0, 10.0, 0, 0, 0)


def test_clock_rejects_jumps_and_teleports_and_confirms_a_real_restart():
    clock = plausibility.VehicleClock(plausibility.Limits())
    assert clock.judge(0, 0, 0.0, 0.0) == "ok"
    assert clock.judge(1, S // 10, 1.0, 0.0) == "ok"
    assert clock.judge(2, FUTURE, 1.0, 0.0).startswith("implausible_time_jump")
    assert clock.judge(2, 2 * S // 10, 2.0, 0.0) == "ok"  # the old clock goes on: lone bad frame
    assert clock.judge(3, 3 * S // 10, 5_000.0, 0.0).startswith("implausible_teleport")
    assert clock.judge(4, 4 * S // 10, 4.0, 0.0) == "ok"
    assert clock.judge(10**9, 5 * S // 10, 5.0, 0.0).startswith("implausible_seq_jump")
    assert clock.judge(3, 6 * S // 10, 6.0, 0.0) == "out_of_order"
    # a vehicle back after an hour: the first frame is held, the second confirms it
    assert clock.judge(5, 3600 * S, 9.0, 0.0).startswith("implausible_time_jump")
    assert clock.judge(6, 3600 * S + S // 10, 10.0, 0.0) == "restart"
    assert clock.judge(7, 3600 * S + 2 * S // 10, 11.0, 0.0) == "ok"


def test_two_forged_frames_from_the_future_freeze_no_vehicle():
    """Two consistent future frames look like a real restart; the clock they jumped away
    from keeps ticking, so the vehicle goes back to it after two of its frames."""
    clock = plausibility.VehicleClock(plausibility.Limits())
    assert [clock.judge(k, k * S // 10, k, 0.0) for k in range(3)] == ["ok"] * 3
    assert clock.judge(1000, FUTURE, 1.0, 0.0).startswith("implausible_time_jump")
    assert clock.judge(1001, FUTURE + S // 10, 2.0, 0.0) == "restart"
    after = [clock.judge(k, k * S // 10, k, 0.0) for k in range(3, 8)]
    assert after == ["out_of_order", "restart", "ok", "ok", "ok"]
    # a real restart stays: nothing continues the clock it left
    assert clock.judge(9, 3600 * S, 9.0, 0.0).startswith("implausible_time_jump")
    assert clock.judge(10, 3600 * S + S // 10, 10.0, 0.0) == "restart"
    assert clock.judge(3, 3 * S // 10, 3.0, 0.0) == "out_of_order"  # older than abandoned
    assert clock.judge(11, 3600 * S + 2 * S // 10, 11.0, 0.0) == "ok"


def test_serving_history_survives_a_frame_from_the_far_future():
    store = HistoryStore(DEFAULT_SPEC, truth_every=1)
    statuses = [store.add_frame(frame(k, k * S // 10), 0) for k in range(20)]
    assert store.add_frame(frame(20, FUTURE), 0).startswith("implausible_time_jump")
    statuses += [store.add_frame(frame(k, k * S // 10), 0) for k in range(20, 60)]
    assert set(statuses) == {"ok"}  # before the fix: every later frame was out_of_order
    assert store.unusable("car") is None
    assert len(store.truth()[0]) > 0


def test_training_keeps_making_samples_after_a_frame_from_the_far_future():
    win = Windower(DEFAULT_SPEC, WindowConfig(holdout_fraction=0.0))
    before = len(win.add_many([frame(k, k * S // 10) for k in range(60)]))
    assert win.add(frame(60, FUTURE)) == []
    after = len(win.add_many([frame(k, k * S // 10) for k in range(60, 120)]))
    assert before > 0 and after == 60  # one sample per new frame, as before the bad one
    assert win.stats.implausible == 1
    assert win.newest_ns < FUTURE


def test_training_and_serving_recover_from_two_forged_future_frames():
    win = Windower(DEFAULT_SPEC, WindowConfig(holdout_fraction=0.0))
    store = HistoryStore(DEFAULT_SPEC, truth_every=1)
    good = [frame(k, k * S // 10) for k in range(120)]
    forged = [frame(1000, FUTURE), frame(1001, FUTURE + S // 10)]
    win.add_many(good[:60])
    win.add_many(forged)
    after = len(win.add_many(good[60:]))
    assert after >= 15  # a fresh track after the restart back; before the fix: 0
    for f in good[:60] + forged:
        store.add_frame(f, 0)
    statuses = [store.add_frame(f, 0) for f in good[60:]]
    assert statuses[0] == "out_of_order" and set(statuses[1:]) == {"ok"}
