"""Derive speed, heading, yaw rate and acceleration from timestamped positions.

Differences are taken across a time window (not between neighbouring rows) so GNSS noise
of ~0.5 m does not turn into metres-per-second of speed noise. The window spans at least
2.5 sample intervals, so 1 Hz fixes still have a neighbour on each side. Heading is held while the
vehicle stands (a standing vehicle has no direction of motion). Values the log did give
are kept; only missing (unmapped or empty) ones are filled.
"""

from __future__ import annotations

import numpy as np

from schemas import sensor

#: Below this displacement over the window the direction of motion is noise: hold heading.
MIN_HEADING_DISPLACEMENT_M = 1.0


def _window(t: np.ndarray, half: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last sample index within +-half ns of each sample.

    Integer nanoseconds keep the window symmetric for evenly spaced samples (float seconds
    would include one edge sample and miss the other at random, wobbling the derivative).
    Near a log's ends the window is one-sided, so derived values settle one window in.
    """
    lo = np.searchsorted(t, t - half, "left")
    hi = np.searchsorted(t, t + half, "right") - 1
    return lo, hi


def _hold(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Forward-fill invalid entries with the last valid one (back-fill the start)."""
    if not valid.any():
        return np.zeros_like(values)
    pos = np.where(valid, np.arange(len(values)), -1)
    pos = np.maximum.accumulate(pos)
    pos[pos < 0] = np.flatnonzero(valid)[0]
    return values[pos]


def _one_vehicle(
    t_ns: np.ndarray, x: np.ndarray, y: np.ndarray, given: dict[str, np.ndarray], half: int
) -> dict[str, np.ndarray]:
    lo, hi = _window(t_ns, half)
    dt = (t_ns[hi] - t_ns[lo]) / 1e9
    span = np.where(dt > 0, dt, np.nan)
    dx, dy = x[hi] - x[lo], y[hi] - y[lo]
    speed = np.nan_to_num(np.hypot(dx, dy) / span)
    moving = np.hypot(dx, dy) >= MIN_HEADING_DISPLACEMENT_M
    heading = _hold(np.arctan2(dy, dx), moving)
    out = {"speed": _fill(given["speed"], speed)}
    out["heading"] = _fill(given["heading"], heading)
    unwrapped = np.unwrap(out["heading"])
    out["yaw_rate"] = _fill(
        given["yaw_rate"], np.nan_to_num((unwrapped[hi] - unwrapped[lo]) / span)
    )
    out["accel"] = _fill(
        given["accel"], np.nan_to_num((out["speed"][hi] - out["speed"][lo]) / span)
    )
    return out


def _fill(given: np.ndarray, derived: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(given), given, derived)


def derive_kinematics(
    vid: np.ndarray,
    t_ns: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    given: dict[str, np.ndarray | None],
    window_s: float,
) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """Complete speed/heading/yaw_rate/accel; rows must be sorted by vehicle, then time.

    Returns the columns and the names of those that were (at least partly) derived.
    Derived values are clipped to the sensor schema's bounds; given ones are not.
    """
    n = len(t_ns)
    filled = {k: (v if v is not None else np.full(n, np.nan)) for k, v in given.items()}
    derived = tuple(
        k for k in ("speed", "heading", "yaw_rate", "accel") if not np.isfinite(filled[k]).all()
    )
    out = {k: np.empty(n) for k in filled}
    starts = np.flatnonzero(np.r_[True, vid[1:] != vid[:-1]])
    for s, e in zip(starts, np.r_[starts[1:], n], strict=True):
        steps = np.diff(t_ns[s:e])
        half = max(window_s * 5e8, 1.25 * float(np.median(steps)) if steps.size else 0.0)
        part = _one_vehicle(
            t_ns[s:e], x[s:e], y[s:e], {k: v[s:e] for k, v in filled.items()}, int(half)
        )
        for k, v in part.items():
            out[k][s:e] = v
    bounds = {
        "speed": sensor.MAX_SPEED_MS,
        "yaw_rate": sensor.MAX_ABS_YAW_RATE,
        "accel": sensor.MAX_ABS_ACCEL,
    }
    for k, bound in bounds.items():
        if k in derived:
            clipped = np.clip(out[k], -bound, bound)
            out[k] = np.where(np.isfinite(filled[k]), out[k], clipped)
    return out, derived


#: A given speed this far (and 50 %) from the position-derived one is not believed.
SPEED_OUTLIER_MS = 5.0
#: A given heading this far from the course of travel of a moving vehicle is not believed.
HEADING_OUTLIER_DEG = 45.0


def blank_outliers(
    vid: np.ndarray,
    t_ns: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    at_fix: dict[str, np.ndarray | None],
    window_s: float,
) -> dict[str, int]:
    """Blank given speeds and headings far from what the positions say (a logger's first
    row of zeros, a stale course), so they are derived instead; returns counts."""
    ref, _ = derive_kinematics(vid, t_ns, x, y, dict.fromkeys(at_fix), window_s)
    out: dict[str, int] = {}
    sp, hd = at_fix["speed"], at_fix["heading"]
    if sp is not None:
        bad = (np.abs(sp) <= sensor.MAX_SPEED_MS) & (
            np.abs(sp - ref["speed"]) > np.maximum(SPEED_OUTLIER_MS, 0.5 * ref["speed"])
        )
        sp[bad] = np.nan
        out["speed"] = int(bad.sum())
    if hd is not None:
        off = np.abs(np.angle(np.exp(1j * (hd - ref["heading"]))))
        bad = (ref["speed"] >= 2.0) & (off > np.radians(HEADING_OUTLIER_DEG))
        hd[bad] = np.nan
        out["heading"] = int(bad.sum())
    return {k: v for k, v in out.items() if v}
