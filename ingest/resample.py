"""Put GNSS fixes onto the model's fixed frame rate, and average IMU samples per frame.

Positions between two fixes follow a cubic Hermite curve: it passes through both fixes
with the velocity vector (speed along heading) of each, so a curve sampled at 1 Hz stays
a curve at 10 Hz instead of becoming a polyline. Speed is interpolated linearly and heading
along the shorter arc between the fixes' values, so each frame carries the speed and heading
whose tangents shaped its position. Frames are never made across fixes further apart than
a cap: the log has a gap there, which the trainer and serving already handle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, kw_only=True, eq=False)
class Frames:
    """Resampled frames of one vehicle."""

    t_ns: np.ndarray
    x: np.ndarray
    y: np.ndarray
    speed: np.ndarray
    heading: np.ndarray
    nearest_fix: np.ndarray
    """Index of the fix nearest each frame (for per-fix fields such as GNSS quality)."""
    gaps: int
    """Fix intervals longer than the cap, left without frames."""


def grid(t_ns: np.ndarray, rate_hz: float, max_gap_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame times on a rate grid aligned to the clock's zero, and each one's fix interval."""
    period = round(1e9 / rate_hz)
    first, last = -(-int(t_ns[0]) // period), int(t_ns[-1]) // period
    times = np.arange(first, last + 1, dtype=np.int64) * period
    if len(t_ns) < 2:
        return times[:0], times[:0]
    j = np.clip(np.searchsorted(t_ns, times, "right") - 1, 0, len(t_ns) - 2)
    on_fix = (times == t_ns[j]) | (times == t_ns[j + 1])
    keep = ((t_ns[j + 1] - t_ns[j]) <= max_gap_ns) | on_fix
    return times[keep], j[keep]


def hermite(
    t_ns: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    speed: np.ndarray,
    heading: np.ndarray,
    rate_hz: float,
    max_gap_s: float,
) -> Frames:
    """Frames at ``rate_hz`` between time-sorted fixes with speed (m/s) and heading (rad)."""
    max_gap_ns = round(max_gap_s * 1e9)
    times, j = grid(t_ns, rate_hz, max_gap_ns)
    h_ns = t_ns[j + 1] - t_ns[j]
    s = (times - t_ns[j]) / h_ns
    h = h_ns / 1e9
    vx, vy = speed * np.cos(heading), speed * np.sin(heading)
    h00, h10 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s
    h01, h11 = -2 * s**3 + 3 * s**2, s**3 - s**2

    def curve(p: np.ndarray, v: np.ndarray) -> np.ndarray:
        return h00 * p[j] + h10 * h * v[j] + h01 * p[j + 1] + h11 * h * v[j + 1]

    turn = np.angle(np.exp(1j * (heading[j + 1] - heading[j])))
    heading_out = np.angle(np.exp(1j * (heading[j] + s * turn)))
    gaps = int((np.diff(t_ns) > max_gap_ns).sum()) if len(t_ns) > 1 else 0
    return Frames(
        t_ns=times,
        x=curve(x, vx),
        y=curve(y, vy),
        speed=speed[j] + s * (speed[j + 1] - speed[j]),
        heading=heading_out,
        nearest_fix=np.where(s < 0.5, j, j + 1),
        gaps=gaps,
    )


def window_mean(
    t_ns: np.ndarray, values: np.ndarray, at_ns: np.ndarray, half_ns: float, reach_ns: float
) -> np.ndarray:
    """Mean of the samples within ``half_ns`` of each time in ``at_ns``.

    ``t_ns`` must be sorted and ``values`` finite. Where no sample is that close, the two
    nearest samples are interpolated if one lies within ``reach_ns``; otherwise NaN.
    """
    out = np.full(len(at_ns), np.nan)
    if len(t_ns) == 0:
        return out
    cum = np.r_[0.0, np.cumsum(values)]
    lo = np.searchsorted(t_ns, at_ns - half_ns, "left")
    hi = np.searchsorted(t_ns, at_ns + half_ns, "right")
    n = hi - lo
    has = n > 0
    out[has] = (cum[hi[has]] - cum[lo[has]]) / n[has]
    near = np.searchsorted(t_ns, at_ns).clip(0, len(t_ns) - 1)
    gap = np.minimum(np.abs(t_ns[near] - at_ns), np.abs(t_ns[(near - 1).clip(0)] - at_ns)).astype(
        float
    )
    fill = ~has & (gap <= reach_ns)
    out[fill] = np.interp(at_ns[fill], t_ns, values)
    return out


Samples = dict[str, tuple[np.ndarray, np.ndarray]]
"""Per vehicle: sorted sample times (ns) and values of one IMU quantity."""


def samples_by_vehicle(
    vid: np.ndarray, t_ns: np.ndarray, values: np.ndarray, use: np.ndarray
) -> Samples:
    """The ``use`` rows' samples, per vehicle, sorted by time."""
    out: Samples = {}
    for v in set(vid[use]):
        sel = use & (vid == v)
        order = np.argsort(t_ns[sel], kind="stable")
        out[v] = (t_ns[sel][order], values[sel][order])
    return out


def per_frame(
    samples: Samples, vid: np.ndarray, t_ns: np.ndarray, rate_hz: float | None
) -> np.ndarray:
    """Mean of the IMU samples around each frame: +-half a frame period, or +-half the
    vehicle's median fix interval when frames are the fixes (``rate_hz`` None)."""
    out = np.full(len(t_ns), np.nan)
    for v in set(vid):
        sel = vid == v
        if v not in samples:
            continue
        ts, vs = samples[v]
        steps = np.diff(t_ns[sel])
        if rate_hz:
            half = 0.5e9 / rate_hz
        else:
            half = 0.5 * float(np.median(steps)) if steps.size else 0.5e9
        out[sel] = window_mean(ts, vs, t_ns[sel], half, max(2 * half, 0.5e9))
    return out
