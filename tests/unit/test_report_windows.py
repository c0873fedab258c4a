"""Who answered when, and the rolling never-worse check the report prints."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.report_output import format_table
from pipeline.report_windows import (
    phases,
    predictor_of,
    predictor_shares,
    rolling_windows,
    stretches,
)

S = 10**9


def test_stretches_follow_the_predictor_answering_most_frames_of_each_second():
    t = np.arange(0, 12 * S, S // 10)  # 12 s at 10 Hz
    answers = [
        ("ctrv", "no_model") if k < 40 else ("ctrv", "unproven") if k < 60 else ("model", "")
        for k in range(len(t))
    ]
    answers[75] = ("cv", "gap")  # one odd frame does not split a stretch
    runs = stretches(t, answers)
    assert [(r["start_s"], r["end_s"], r["predictor"], r["reason"]) for r in runs] == [
        (0, 4, "ctrv", "no_model"),
        (4, 6, "ctrv", "unproven"),
        (6, 12, "model", ""),
    ]
    assert sum(r["frames"] for r in runs) == len(t)
    shares = predictor_shares(answers)
    assert shares["model"]["share"] == pytest.approx(59 / 120)
    assert shares["ctrv"]["reasons"] == {
        "no_model": pytest.approx(40 / 120),
        "unproven": pytest.approx(20 / 120),
    }
    assert predictor_of("fallback", "cv", "physics_better") == ("cv", "physics_better")
    assert predictor_of("model", "drivestream-mlp", "") == ("model", "")


def test_rolling_windows_find_the_worst_late_window():
    t = np.arange(0, 90 * S, S // 10)
    rel = t / S
    cv = np.full(len(t), 2.0)
    ctrv = np.full(len(t), 3.0)
    served = np.where(rel < 30, 4.0, 1.0)  # bad while warming up, then half of CV
    served[(rel >= 60) & (rel < 62)] = 10.0  # a bad two seconds late in the run
    roll = rolling_windows(t, served, cv, ctrv)
    assert roll["windows"][0]["start_s"] == 0 and roll["windows"][-1]["start_s"] == 55
    assert roll["windows_checked"] == 6  # windows starting at 30, 35, ..., 55
    worst = max(w["served"] for w in roll["windows"] if w["start_s"] >= 30)
    assert roll["worst_ratio"] == pytest.approx(worst / 2.0)
    assert 0.5 < roll["worst_ratio"] < 1.0  # the warm-up is not held against it
    short = rolling_windows(t[:200], served[:200], cv[:200], ctrv[:200])
    assert short["worst_ratio"] is None and len(short["windows"]) == 1


def test_table_prints_predictors_stretches_and_the_check():
    t = np.arange(0, 70 * S, S // 10)
    answers = [("ctrv", "no_model") if k < 100 else ("model", "") for k in range(len(t))]
    served = np.ones(len(t))
    acc = {
        "scored": len(t),
        "frames": len(t) + 30,
        "scored_share": len(t) / (len(t) + 30),
        "served": {"per_horizon_m": {"3s": 1.0}, "ade_m": 0.5, "fde_m": 1.0},
        "cv": {"per_horizon_m": {"3s": 2.0}, "ade_m": 1.0, "fde_m": 2.0},
        "ctrv": {"per_horizon_m": {"3s": 3.0}, "ade_m": 1.5, "fde_m": 3.0},
        "predictors": predictor_shares(answers),
        "stretches": stretches(t, answers),
        "rolling_fde": rolling_windows(t, served, 2 * served, 3 * served),
    }
    report = {
        "latency": {"count": 0},
        "models": {"model_versions_served": [1], "fallback_share": 0.25, "fallback_reasons": {}},
        "accuracy": acc,
        "truth_source": "log",
    }
    text = format_table(report)
    assert "scored 700 of 730 frames" in text
    assert "answered by: model 85.7 %, ctrv 14.3 % (no_model 14.3 %)" in text
    assert "stretches: 0-10 s ctrv (no_model) | 10-70 s model" in text
    assert "served/best physics = 0.500 (2 windows)" in text


def test_phases_report_the_minute_mark_and_the_end_only_when_the_run_covers_them():
    t = np.arange(0, 100 * S, S // 10)
    rel = t / S
    served = np.stack([rel, 2 * rel], -1)  # error grows with time: easy to check the means
    out = phases(t, {"served": served}, (1.0, 3.0))
    assert out["30-60s"]["served"]["1s"] == pytest.approx(45.0, abs=0.1)
    assert out["last_30s"]["served"]["3s"] == pytest.approx(2 * 84.95, abs=0.2)
    short = phases(t[:400], {"served": served[:400]}, (1.0, 3.0))
    assert "30-60s" not in short and short["last_30s"]["frames"] == 301
