"""The report's arithmetic on predictions with known stamps: exact percentiles and accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.report import (
    Received,
    TruthTracks,
    accuracy_summary,
    latency_summary,
    percentiles_ms,
    version_summary,
)
from pipeline.report_output import format_table
from schemas.prediction import Prediction
from schemas.sensor import SensorFrame

MS = 1_000_000
H = (0.5, 1.0, 2.0, 3.0)


def prediction(i: int, *, e2e_ms: float, version: int = 3, source: str = "model") -> Received:
    """Frame produced at i seconds; stages 1/2/3/4 ms; received e2e_ms after production."""
    t0 = i * 1_000 * MS
    p = Prediction(
        vehicle_id=f"v{i % 3}",
        seq=i,
        t_event_ns=t0,
        horizons_s=H,
        pred_x=(0.0,) * 4,
        pred_y=(0.0,) * 4,
        model_version=version if source == "model" else -1,
        model_name="mlp" if source == "model" else "cv",
        source=source,
        reason="" if source == "model" else "no_model",
        t_produce_ns=t0,
        t_consumed_ns=t0 + 1 * MS,
        t_infer_start_ns=t0 + 3 * MS,
        t_infer_end_ns=t0 + 6 * MS,
        t_published_ns=t0 + 10 * MS,
    )
    return Received(p, t0 + int(e2e_ms * MS))


def test_percentiles_are_nearest_rank_values():
    values = [v * MS for v in range(1, 1001)]  # 1..1000 ms
    pct = percentiles_ms(values)
    assert pct == {
        "p50": 500.0,
        "p90": 900.0,
        "p99": 990.0,
        "p99.9": 999.0,
        "max": 1000.0,
        "mean": 500.5,
    }


def test_latency_summary_exact_percentiles_budget_and_stages():
    received = [prediction(i, e2e_ms=11 + i) for i in range(100)]  # e2e 11..110 ms
    summary = latency_summary(received, budget_ms=50)
    assert summary["count"] == 100
    e2e = summary["end_to_end_ms"]
    assert (e2e["p50"], e2e["p90"], e2e["p99"], e2e["p99.9"], e2e["max"]) == (
        60.0,
        100.0,
        109.0,
        110.0,
        110.0,
    )
    assert summary["budget_miss_rate"] == pytest.approx(0.60)  # 51..110 ms miss
    stages = summary["stages_ms"]
    assert stages["kafka_in"]["p50"] == 1.0
    assert stages["queue"]["p99"] == 2.0
    assert stages["compute"]["max"] == 3.0
    assert stages["publish"]["p50"] == 4.0
    assert stages["kafka_out"]["p50"] == 50.0  # e2e 60 - published 10
    # 100 predictions whose production spans 99 s and the last lands 110 ms after its frame.
    assert summary["throughput_per_s"] == pytest.approx(100 / 99.11)


def test_version_summary_splits_fallback_and_versions():
    received = [prediction(i, e2e_ms=5, version=1 + i // 4) for i in range(8)]
    received += [prediction(8, e2e_ms=5, source="fallback")]
    summary = version_summary(received)
    assert summary["model_versions_served"] == [1, 2]
    assert summary["versions"]["1"]["count"] == 4 and summary["versions"]["fallback"]["count"] == 1
    assert summary["fallback_share"] == pytest.approx(1 / 9)
    assert summary["fallback_reasons"] == {"no_model": 1}


def test_accuracy_against_truth_beside_cv_and_ctrv():
    # A vehicle on a circle of radius 50 m at 10 m/s: CTRV is exact, CV is not.
    v, w = 10.0, 0.2
    times = np.arange(0, 20, 0.1)
    heading = w * times
    xs, ys = 50 * np.sin(heading), 50 * (1 - np.cos(heading))
    truth = TruthTracks.from_points(
        ("car", round(t * 1e9), x, y) for t, x, y in zip(times, xs, ys, strict=True)
    )
    frames, received = {}, []
    for seq in range(0, 100, 10):
        t = times[seq]
        frames[("car", seq)] = SensorFrame(
            "car",
            seq,
            round(t * 1e9),
            xs[seq],
            ys[seq],
            v,
            math.atan2(math.sin(heading[seq]), math.cos(heading[seq])),
            w,
            0.0,
        )
        # The "model" predicts the true future shifted by 1 m in x.
        future = [w * (t + h) for h in H]
        p = Prediction(
            "car",
            seq,
            round(t * 1e9),
            H,
            tuple(50 * math.sin(a) + 1.0 for a in future),
            tuple(50 * (1 - math.cos(a)) for a in future),
            1,
            "mlp",
            "model",
            "",
            0,
            0,
            0,
            0,
            0,
        )
        received.append(Received(p, 0))
    acc = accuracy_summary(received, frames, truth)
    assert acc["scored"] == 10
    # Interpolation between 0.1 s samples of an arc of 10 m/s: chord error < 3 cm.
    assert acc["served"]["ade_m"] == pytest.approx(1.0, abs=0.03)
    assert acc["ctrv"]["fde_m"] == pytest.approx(0.0, abs=0.03)
    assert acc["cv"]["fde_m"] > 5.0  # 3 s at 0.2 rad/s leaves a straight line far behind
    assert acc["by_version"]["1"]["scored"] == 10


def test_truth_is_not_invented_beyond_the_track_or_over_gaps():
    truth = TruthTracks.from_points(
        [("a", 0, 0.0, 0.0), ("a", 4 * 10**8, 0.4, 0.0), ("a", 5 * 10**9, 5.0, 0.0)]
    )
    s = 10**9
    assert truth.at("a", np.array([s // 5])) == pytest.approx(np.array([[0.2, 0.0]]))
    assert truth.at("a", np.array([2 * s])) is None  # inside a 4 s gap
    assert truth.at("a", np.array([6 * s])) is None  # after the end
    assert truth.at("b", np.array([s // 2])) is None


def test_table_shows_the_figures():
    received = [prediction(i, e2e_ms=11 + i) for i in range(100)]
    report = {
        "latency": latency_summary(received, 50),
        "models": version_summary(received),
        "accuracy": {"scored": 0},
        "truth_source": "x",
    }
    table = format_table(report)
    assert "60.00" in table and "110.00" in table and "missed by 60.00 %" in table


def test_warmup_misses_are_counted_apart_from_the_steady_state():
    # frames at 0..99 s; the first 10 s are slow (200 ms), the rest take 20 ms but 5 miss
    received = [prediction(i, e2e_ms=200 if i < 10 else 20) for i in range(100)]
    received += [prediction(100 + i, e2e_ms=80) for i in range(5)]
    summary = latency_summary(received, budget_ms=50, warmup_s=10)
    assert (summary["warmup_count"], summary["warmup_misses"]) == (10, 10)
    assert summary["budget_miss_rate"] == pytest.approx(15 / 105)
    assert summary["steady_miss_rate"] == pytest.approx(5 / 95)
    assert summary["steady_end_to_end_ms"]["p50"] == 20.0
    table = format_table(
        {
            "latency": summary,
            "models": version_summary(received),
            "accuracy": {"scored": 0},
            "truth_source": "x",
        }
    )
    assert "(first 10 s: 10 of 10; after: 5.26 %, p99 80.00 ms)" in table
