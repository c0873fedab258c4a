"""Physics baselines shared by every stage: constant velocity (CV), constant acceleration
(CA) and constant turn rate and velocity (CTRV). The inference fallback, the trainer's
online metrics and the report all score against these same functions.

Inputs are arrays (or scalars) in the units of schemas.sensor; the result is
``[N, len(horizons_s), 2]`` absolute x/y.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

#: Below this |yaw rate| (rad/s) CTRV is numerically CV.
STRAIGHT_YAW_RATE = 1e-3

Array = npt.NDArray[np.float64]


def _prep(*values: npt.ArrayLike) -> list[Array]:
    return [np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in values]


def predict_cv(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    speed: npt.ArrayLike,
    heading: npt.ArrayLike,
    horizons_s: Sequence[float],
) -> Array:
    """Straight line at constant speed along the heading."""
    x, y, v, h = _prep(x, y, speed, heading)
    t = np.asarray(horizons_s, dtype=np.float64)[None, :]
    dist = v[:, None] * t
    return np.stack(
        [x[:, None] + dist * np.cos(h)[:, None], y[:, None] + dist * np.sin(h)[:, None]], -1
    )


def predict_ca(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    speed: npt.ArrayLike,
    heading: npt.ArrayLike,
    accel: npt.ArrayLike,
    horizons_s: Sequence[float],
) -> Array:
    """Straight line along the heading at constant acceleration; a braking vehicle stops
    (it never reverses)."""
    x, y, v, h, a = _prep(x, y, speed, heading, accel)
    t = np.asarray(horizons_s, dtype=np.float64)[None, :]
    braking = a < 0
    t_stop = np.where(braking, v / np.where(braking, -a, 1.0), np.inf)[:, None]
    tt = np.minimum(t, t_stop)
    dist = v[:, None] * tt + 0.5 * a[:, None] * tt**2
    return np.stack(
        [x[:, None] + dist * np.cos(h)[:, None], y[:, None] + dist * np.sin(h)[:, None]], -1
    )


def predict_ctrv(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    speed: npt.ArrayLike,
    heading: npt.ArrayLike,
    yaw_rate: npt.ArrayLike,
    horizons_s: Sequence[float],
) -> Array:
    """Circular arc at constant speed and yaw rate; CV where |yaw rate| < STRAIGHT_YAW_RATE."""
    x, y, v, h, w = _prep(x, y, speed, heading, yaw_rate)
    t = np.asarray(horizons_s, dtype=np.float64)[None, :]
    straight = np.abs(w) < STRAIGHT_YAW_RATE
    w_safe = np.where(straight, 1.0, w)[:, None]
    h0 = h[:, None]
    r = v[:, None] / w_safe
    arc_x = x[:, None] + r * (np.sin(h0 + w_safe * t) - np.sin(h0))
    arc_y = y[:, None] + r * (np.cos(h0) - np.cos(h0 + w_safe * t))
    out = np.stack([arc_x, arc_y], -1)
    if straight.any():
        out[straight] = predict_cv(x[straight], y[straight], v[straight], h[straight], horizons_s)
    return out


def displacement_errors(pred: Array, truth: Array) -> Array:
    """Euclidean error per sample and horizon, ``[N, K]`` metres."""
    return np.linalg.norm(np.asarray(pred) - np.asarray(truth), axis=-1)
