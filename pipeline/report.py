"""Latency and accuracy of a predictions stream, as the user's measuring client sees it.

End-to-end latency of a prediction = the time this client received it minus the
t_produce_ns of its frame. The stamps split it into stages: Kafka in (produce -> consumed),
queue (consumed -> inference start), compute, publish (inference end -> published) and
Kafka out (published -> received). Percentiles are nearest-rank, so they are values that
were actually observed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.report_windows import (
    phases,
    predictor_of,
    predictor_shares,
    rolling_windows,
    stretches,
)
from schemas import window
from schemas.kinematics import displacement_errors, predict_ca, predict_ctrv, predict_cv
from schemas.prediction import Prediction
from schemas.sensor import SensorFrame
from schemas.stats import nearest_rank

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
STAGES = ("kafka_in", "queue", "compute", "publish", "kafka_out")


def percentiles_ms(values_ns: Iterable[float]) -> dict[str, float]:
    """Nearest-rank p50/p90/p99/p99.9 and max, in milliseconds."""
    arr = np.asarray(list(values_ns), dtype=np.float64) / 1e6
    if arr.size == 0:
        return {}
    values = nearest_rank(arr, PERCENTILES)
    out = {f"p{p:g}": v for p, v in zip(PERCENTILES, values, strict=True)}
    out["max"] = float(arr.max())
    out["mean"] = float(arr.mean())
    return out


@dataclass
class Received:
    """One prediction and the wall-clock ns at which the measuring client got it."""

    prediction: Prediction
    t_received_ns: int


def stage_ns(r: Received) -> dict[str, int]:
    p = r.prediction
    return {
        "kafka_in": p.t_consumed_ns - p.t_produce_ns,
        "queue": p.t_infer_start_ns - p.t_consumed_ns,
        "compute": p.t_infer_end_ns - p.t_infer_start_ns,
        "publish": p.t_published_ns - p.t_infer_end_ns,
        "kafka_out": r.t_received_ns - p.t_published_ns,
    }


WARMUP_S = 10.0
"""Answers to frames produced in the run's first this many seconds are the warm-up: the
group join, the first model load and the replayer's start. Their budget misses are counted
apart from the steady state's."""


def latency_summary(
    received: list[Received], budget_ms: float, warmup_s: float = WARMUP_S
) -> dict[str, Any]:
    """End-to-end percentiles, budget misses (all, warm-up, steady), throughput and the
    split by stage."""
    if not received:
        return {"count": 0}
    e2e = np.array([r.t_received_ns - r.prediction.t_produce_ns for r in received], np.float64)
    produced = np.array([r.prediction.t_produce_ns for r in received], np.int64)
    first = int(produced.min())
    last = max(r.t_received_ns for r in received)
    missed = e2e > budget_ms * 1e6
    warm = produced < first + int(warmup_s * 1e9)
    stages = [stage_ns(r) for r in received]
    return {
        "count": len(received),
        "end_to_end_ms": percentiles_ms(e2e),
        "budget_ms": budget_ms,
        "budget_miss_rate": float(np.mean(missed)),
        "warmup_s": warmup_s,
        "warmup_count": int(warm.sum()),
        "warmup_misses": int(missed[warm].sum()),
        "steady_end_to_end_ms": percentiles_ms(e2e[~warm]) if (~warm).any() else None,
        "steady_miss_rate": float(np.mean(missed[~warm])) if (~warm).any() else 0.0,
        "throughput_per_s": len(received) / max((last - first) / 1e9, 1e-9),
        "stages_ms": {s: percentiles_ms(st[s] for st in stages) for s in STAGES},
    }


@dataclass
class TruthTracks:
    """Per-vehicle position tracks to interpolate ground truth from, in time."""

    tracks: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    """vehicle_id -> (t_ns int64, x, y), sorted by time."""

    @classmethod
    def from_points(cls, points: Iterable[tuple[str, int, float, float]]) -> TruthTracks:
        """From (vehicle_id, t_ns, x, y) rows in any order."""
        rows: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
        for vid, t, x, y in points:
            rows[vid].append((t, x, y))
        tracks = {}
        for vid, pts in rows.items():
            ordered = sorted(set(pts))
            t_ns = np.array([p[0] for p in ordered], dtype=np.int64)
            xy = np.array([p[1:] for p in ordered], dtype=np.float64).reshape(-1, 2)
            tracks[vid] = (t_ns, xy[:, 0], xy[:, 1])
        return cls(tracks)

    def at(self, vehicle_id: str, times_ns: np.ndarray) -> np.ndarray | None:
        """``[K, 2]`` positions at ``times_ns``, or None if any is outside the track or over
        a gap (the :mod:`schemas.window` label rule the trainer learns from)."""
        track = self.tracks.get(vehicle_id)
        if track is None:
            return None
        pos, ok = window.interpolate(*track, times_ns)
        return pos if ok.all() else None


def accuracy_summary(
    received: list[Received],
    frames: dict[tuple[str, int], SensorFrame],
    truth: TruthTracks,
) -> dict[str, Any]:
    """Mean error per horizon of the served predictions beside CV, CTRV and CA on the same
    frames: over the run, per stretch of time (``phases``) and on rolling windows.

    ``frames`` maps (vehicle_id, seq) to the frame answered (for the baselines); ``truth``
    gives positions at frame time + horizon. Predictions without both are not scored.
    """
    served, cv, ctrv, ca, versions, times = [], [], [], [], [], []
    answers: list[tuple[str, str]] = []
    horizons: tuple[float, ...] = ()
    for r in received:
        p = r.prediction
        frame = frames.get((p.vehicle_id, p.seq))
        if frame is None:
            continue
        horizons = p.horizons_s
        gt = truth.at(p.vehicle_id, window.label_times_ns(p.t_event_ns, horizons)[0])
        if gt is None:
            continue
        args = (frame.x, frame.y, frame.speed, frame.heading)
        served.append(displacement_errors(np.stack([p.pred_x, p.pred_y], -1), gt))
        cv.append(displacement_errors(predict_cv(*args, horizons)[0], gt))
        ctrv.append(displacement_errors(predict_ctrv(*args, frame.yaw_rate, horizons)[0], gt))
        ca.append(displacement_errors(predict_ca(*args, frame.accel, horizons)[0], gt))
        versions.append(p.model_version if p.source == "model" else -1)
        times.append(p.t_event_ns)
        answers.append(predictor_of(p.source, p.model_name, p.reason))
    if not served:
        return {"scored": 0, "frames": len(frames)}

    def per_horizon(errors: list[np.ndarray]) -> dict[str, Any]:
        arr = np.asarray(errors)
        return {
            "per_horizon_m": {
                f"{h:g}s": float(m) for h, m in zip(horizons, arr.mean(0), strict=True)
            },
            "ade_m": float(arr.mean()),
            "fde_m": float(arr[:, -1].mean()),
        }

    served_arr = np.asarray(served)
    by_version = {}
    for v in sorted(set(versions)):
        mask = np.asarray(versions) == v
        by_version["fallback" if v == -1 else str(v)] = {
            "scored": int(mask.sum()),
            "fde_m": float(served_arr[mask, -1].mean()),
        }
    t_arr = np.asarray(times, dtype=np.int64)
    return {
        "scored": len(served),
        "frames": len(frames),
        "scored_share": len(served) / max(len(frames), 1),
        "served": per_horizon(served),
        "cv": per_horizon(cv),
        "ctrv": per_horizon(ctrv),
        "ca": per_horizon(ca),
        "by_version": by_version,
        "phases": phases(
            t_arr,
            {
                "served": served_arr,
                "cv": np.asarray(cv),
                "ctrv": np.asarray(ctrv),
                "ca": np.asarray(ca),
            },
            horizons,
        ),
        "predictors": predictor_shares(answers),
        "stretches": stretches(t_arr, answers),
        "rolling_fde": rolling_windows(
            t_arr, served_arr[:, -1], np.asarray(cv)[:, -1], np.asarray(ctrv)[:, -1]
        ),
        "timeline": {"t_event_ns": times, "version": versions, "fde_m": served_arr[:, -1].tolist()},
    }


def version_summary(received: list[Received]) -> dict[str, Any]:
    """Count and latency per model version (fallback answers under 'fallback')."""
    groups: dict[str, list[Received]] = defaultdict(list)
    reasons: dict[str, int] = defaultdict(int)
    for r in received:
        p = r.prediction
        groups["fallback" if p.source == "fallback" else str(p.model_version)].append(r)
        if p.source == "fallback":
            reasons[p.reason or "unspecified"] += 1
    out: dict[str, Any] = {
        key: {
            "count": len(items),
            "end_to_end_ms": percentiles_ms(
                r.t_received_ns - r.prediction.t_produce_ns for r in items
            ),
        }
        for key, items in sorted(groups.items())
    }
    total = max(len(received), 1)
    return {
        "versions": out,
        "fallback_share": len(groups.get("fallback", [])) / total,
        "fallback_reasons": dict(reasons),
        "model_versions_served": sorted(int(k) for k in groups if k != "fallback"),
    }
