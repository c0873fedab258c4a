"""Physics fallback: constant turn rate and velocity (CTRV), or constant velocity (CV).

Answers when the model cannot (no model yet, too little history, a gap, out of budget). Uses
only the newest frame: x/y local metres, heading rad CCW from east, speed m/s, yaw rate rad/s.
The formulas live in schemas.kinematics (shared with the trainer and the report); this module
only picks CV or CTRV per vehicle and names the choice.
"""

from __future__ import annotations

import numpy as np

from schemas import kinematics

CTRV = "ctrv"
CV = "cv"


def predict(
    x: np.ndarray,
    y: np.ndarray,
    speed: np.ndarray,
    heading: np.ndarray,
    yaw_rate: np.ndarray,
    horizons_s: tuple[float, ...],
    yaw_eps: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised over N vehicles: ``[N, K, 2]`` positions and the CTRV mask (else CV)."""
    turning = np.abs(yaw_rate) >= yaw_eps
    out = kinematics.predict_cv(x, y, speed, heading, horizons_s)
    if turning.any():
        t = turning
        out[t] = kinematics.predict_ctrv(x[t], y[t], speed[t], heading[t], yaw_rate[t], horizons_s)
    return out, turning


def predict_one(
    x: float,
    y: float,
    speed: float,
    heading: float,
    yaw_rate: float,
    horizons_s: tuple[float, ...],
    yaw_eps: float = kinematics.STRAIGHT_YAW_RATE,
) -> tuple[str, tuple[float, ...], tuple[float, ...]]:
    """Return (model name, xs, ys) at each horizon for one vehicle state."""
    x_, y_, v_, h_, w_ = (np.array([v], dtype=np.float64) for v in (x, y, speed, heading, yaw_rate))
    out, turning = predict(x_, y_, v_, h_, w_, horizons_s, yaw_eps)
    return (
        CTRV if turning[0] else CV,
        tuple(out[0, :, 0].tolist()),
        tuple(out[0, :, 1].tolist()),
    )


def predict_windows(
    windows: np.ndarray,
    horizons_s: tuple[float, ...],
    yaw_eps: float = kinematics.STRAIGHT_YAW_RATE,
) -> np.ndarray:
    """Vectorised fallback over model-input windows ``[B, T, 7]`` -> ``[B, K, 2]``.

    Used as the accuracy baseline when no model is serving yet.
    """
    last = windows[:, -1, :].astype(np.float64)
    out, _ = predict(
        last[:, 1], last[:, 2], last[:, 3], last[:, 4], last[:, 5], horizons_s, yaw_eps
    )
    return out
