"""Physics fallback: constant turn rate and velocity (CTRV), or constant velocity (CV).

Answers when the model cannot (no model yet, too little history, out of budget). Uses only
the newest frame: x/y local metres, heading rad CCW from east, speed m/s, yaw rate rad/s.
"""

from __future__ import annotations

import math

import numpy as np

CTRV = "ctrv"
CV = "cv"


def predict_one(
    x: float,
    y: float,
    speed: float,
    heading: float,
    yaw_rate: float,
    horizons_s: tuple[float, ...],
    yaw_eps: float = 1e-3,
) -> tuple[str, tuple[float, ...], tuple[float, ...]]:
    """Return (model name, xs, ys) at each horizon for one vehicle state."""
    if abs(yaw_rate) < yaw_eps:
        c, s = math.cos(heading), math.sin(heading)
        xs = tuple(x + speed * c * h for h in horizons_s)
        ys = tuple(y + speed * s * h for h in horizons_s)
        return CV, xs, ys
    r = speed / yaw_rate
    s0, c0 = math.sin(heading), math.cos(heading)
    xs = tuple(x + r * (math.sin(heading + yaw_rate * h) - s0) for h in horizons_s)
    ys = tuple(y + r * (c0 - math.cos(heading + yaw_rate * h)) for h in horizons_s)
    return CTRV, xs, ys


def predict_windows(
    windows: np.ndarray, horizons_s: tuple[float, ...], yaw_eps: float = 1e-3
) -> np.ndarray:
    """Vectorised fallback over model-input windows ``[B, T, 7]`` -> ``[B, K, 2]``.

    Used as the accuracy baseline when no model is serving yet.
    """
    last = windows[:, -1, :].astype(np.float64)
    x, y, v, th, w = last[:, 1], last[:, 2], last[:, 3], last[:, 4], last[:, 5]
    h = np.asarray(horizons_s, dtype=np.float64)[None, :]
    turning = np.abs(w) >= yaw_eps
    w_safe = np.where(turning, w, 1.0)[:, None]
    r = (v[:, None]) / w_safe
    thh = th[:, None] + w_safe * h
    xt = x[:, None] + r * (np.sin(thh) - np.sin(th)[:, None])
    yt = y[:, None] + r * (np.cos(th)[:, None] - np.cos(thh))
    xc = x[:, None] + (v * np.cos(th))[:, None] * h
    yc = y[:, None] + (v * np.sin(th))[:, None] * h
    out = np.empty((len(windows), h.shape[1], 2), dtype=np.float64)
    out[..., 0] = np.where(turning[:, None], xt, xc)
    out[..., 1] = np.where(turning[:, None], yt, yc)
    return out
