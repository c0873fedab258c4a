"""Over time: which predictor answered each stretch of a run, and served error beside physics
on rolling windows (the "never worse than physics" check the report prints).

Time is frame time (``t_event_ns``) from the run's first scored frame, so a replayed log
reads in its own seconds whatever the replay speed.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

NS = 1e9
#: Rolling comparison windows: this long, one starting every ``WINDOW_STEP_S``.
WINDOW_S = 30.0
WINDOW_STEP_S = 5.0
#: Windows starting before this are warm-up (the model has had no chance to learn yet).
WARMUP_S = 30.0


def predictor_of(source: str, model_name: str, reason: str) -> tuple[str, str]:
    """(predictor, reason) of one answer: 'model', or the physics name and why it answered."""
    if source == "model":
        return "model", ""
    return model_name or "fallback", reason or "unspecified"


def predictor_shares(answers: list[tuple[str, str]]) -> dict[str, Any]:
    """Share of answers per predictor, and per reason within each physics predictor."""
    total = max(len(answers), 1)
    by = Counter(p for p, _ in answers)
    reasons: dict[str, Counter[str]] = {}
    for p, r in answers:
        if r:
            reasons.setdefault(p, Counter())[r] += 1
    return {
        p: {
            "share": n / total,
            "count": n,
            "reasons": {r: c / total for r, c in sorted(reasons.get(p, Counter()).items())},
        }
        for p, n in by.most_common()
    }


def stretches(t_ns: np.ndarray, answers: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Runs of seconds in which one (predictor, reason) answered most frames."""
    if not len(t_ns):
        return []
    sec = ((t_ns - t_ns.min()) // int(NS)).astype(np.int64)
    per_second: dict[int, Counter[tuple[str, str]]] = {}
    for s, a in zip(sec.tolist(), answers, strict=True):
        per_second.setdefault(s, Counter())[a] += 1
    out: list[dict[str, Any]] = []
    for s in sorted(per_second):
        (pred, reason), _ = per_second[s].most_common(1)[0]
        n = sum(per_second[s].values())
        if out and (out[-1]["predictor"], out[-1]["reason"]) == (pred, reason):
            out[-1]["end_s"], out[-1]["frames"] = s + 1, out[-1]["frames"] + n
        else:
            out.append(
                {"start_s": s, "end_s": s + 1, "predictor": pred, "reason": reason, "frames": n}
            )
    return out


def rolling_windows(
    t_ns: np.ndarray, served: np.ndarray, cv: np.ndarray, ctrv: np.ndarray
) -> dict[str, Any]:
    """Mean error at the longest horizon per rolling window; the worst served/physics ratio
    over windows that start after the warm-up (None when the run is too short for one)."""
    if not len(t_ns):
        return {"windows": [], "worst_ratio": None}
    rel = (t_ns - t_ns.min()) / NS
    span = float(rel.max())
    windows = []
    starts = np.arange(0.0, max(span - WINDOW_S, 0.0) + 1e-9, WINDOW_STEP_S)
    for start in starts:
        sel = (rel >= start) & (rel < start + WINDOW_S)
        if not sel.any():
            continue
        row = {
            "start_s": float(start),
            "frames": int(sel.sum()),
            "served": float(served[sel].mean()),
            "cv": float(cv[sel].mean()),
            "ctrv": float(ctrv[sel].mean()),
        }
        row["best_physics"] = min(row["cv"], row["ctrv"])
        windows.append(row)
    late = [w for w in windows if w["start_s"] >= WARMUP_S]
    worst = max(
        (w["served"] / w["best_physics"] for w in late if w["best_physics"] > 0), default=None
    )
    return {
        "window_s": WINDOW_S,
        "after_s": WARMUP_S,
        "windows": windows,
        "worst_ratio": worst,
        "windows_checked": len(late),
    }


#: Stretches of a run that ``phases`` reports: (name, start, end) seconds; negative = from
#: the end of the run.
PHASES = (("30-60s", 30.0, 60.0), ("last_30s", -30.0, 0.0))


def phases(
    t_ns: np.ndarray, errors: dict[str, np.ndarray], horizons_s: tuple[float, ...]
) -> dict[str, Any]:
    """Mean error per horizon of each predictor over each of ``PHASES`` (those the run covers):
    what the model reached after its first minute, and at the end."""
    if not len(t_ns):
        return {}
    rel = (t_ns - t_ns.min()) / NS
    span = float(rel.max())
    out: dict[str, Any] = {}
    for name, lo, hi in PHASES:
        if lo < 0:
            lo, hi = max(span + lo, 0.0), span + 1e-9
        elif span < hi:
            continue
        sel = (rel >= lo) & (rel <= hi)
        if not sel.any():
            continue
        out[name] = {"frames": int(sel.sum())} | {
            pred: {f"{h:g}s": float(e) for h, e in zip(horizons_s, arr[sel].mean(0), strict=True)}
            for pred, arr in errors.items()
        }
    return out
