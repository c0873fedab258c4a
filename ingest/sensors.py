"""Sensor model: what a GNSS receiver and vehicle bus report given the true state.

GNSS: white noise plus a slowly drifting (first-order Gauss-Markov) bias, occasional wild
fixes (multipath) left unflagged as real receivers do, and dropouts that remove whole ticks.
Vehicle bus: speed (zero at standstill), yaw rate with a constant gyro bias, longitudinal
acceleration, and an INS heading, each with white noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: NMEA GGA fix quality the simulator reports (2 = differential GNSS).
GNSS_QUALITY_DGPS = 2


@dataclass(frozen=True, kw_only=True)
class SensorNoise:
    """Noise levels; defaults are a consumer-grade DGPS receiver and a vehicle bus."""

    gnss_noise_m: float = 0.5
    """Horizontal RMS of the white position noise (per axis: / sqrt 2)."""
    gnss_bias_m: float = 0.2
    """Horizontal RMS of the drifting bias."""
    gnss_bias_tau_s: float = 60.0
    dropouts_per_min: float = 0.4
    dropout_s: tuple[float, float] = (0.5, 3.0)
    outlier_prob: float = 0.002
    outlier_m: tuple[float, float] = (5.0, 25.0)
    speed_sigma: float = 0.08
    speed_rel_sigma: float = 0.005
    heading_sigma: float = 0.012
    yaw_sigma: float = 0.008
    yaw_bias_sigma: float = 0.003
    accel_sigma: float = 0.15


def _bias(
    shape: tuple[int, int], rate_hz: float, n: SensorNoise, rng: np.random.Generator
) -> np.ndarray:
    """Gauss-Markov bias per axis, [vehicles, ticks, 2], stationary RMS gnss_bias_m."""
    sigma = n.gnss_bias_m / np.sqrt(2)
    phi = np.exp(-1 / (rate_hz * n.gnss_bias_tau_s))
    drive = rng.normal(0, sigma * np.sqrt(1 - phi**2), (*shape, 2))
    out = np.empty_like(drive)
    out[:, 0] = rng.normal(0, sigma, (shape[0], 2))
    for k in range(1, shape[1]):
        out[:, k] = phi * out[:, k - 1] + drive[:, k]
    return out


def _dropouts(t: np.ndarray, n: SensorNoise, rng: np.random.Generator) -> np.ndarray:
    """Boolean keep-mask [vehicles, ticks]; False inside dropout windows."""
    keep = np.ones(t.shape, bool)
    minutes = (t[:, -1] - t[:, 0]) / 60
    for v in range(t.shape[0]):
        for _ in range(rng.poisson(n.dropouts_per_min * minutes[v])):
            start = rng.uniform(t[v, 0], t[v, -1])
            keep[v] &= ~((t[v] >= start) & (t[v] < start + rng.uniform(*n.dropout_s)))
    keep[:, 0] = True  # every vehicle's log starts with a fix
    return keep


def measure(
    truth: dict[str, np.ndarray],
    t: np.ndarray,
    rate_hz: float,
    n: SensorNoise,
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Measured columns (x, y, speed, heading, yaw_rate, accel, gnss_quality) and keep-mask."""
    shape = t.shape
    white = rng.normal(0, n.gnss_noise_m / np.sqrt(2), (*shape, 2))
    err = white + _bias(shape, rate_hz, n, rng)
    wild = rng.random(shape) < n.outlier_prob
    angle = rng.uniform(-np.pi, np.pi, shape)
    jump = rng.uniform(*n.outlier_m, shape) * wild
    err[..., 0] += jump * np.cos(angle)
    err[..., 1] += jump * np.sin(angle)
    v = truth["speed"]
    speed = v + rng.normal(0, 1, shape) * (n.speed_sigma + n.speed_rel_sigma * v)
    speed = np.where(v < 0.05, 0.0, np.maximum(speed, 0.0))
    heading = truth["heading"] + rng.normal(0, n.heading_sigma, shape)
    yaw_bias = rng.normal(0, n.yaw_bias_sigma, (shape[0], 1))
    out = {
        "x": truth["x"] + err[..., 0],
        "y": truth["y"] + err[..., 1],
        "speed": speed,
        "heading": (heading + np.pi) % (2 * np.pi) - np.pi,
        "yaw_rate": truth["yaw_rate"] + yaw_bias + rng.normal(0, n.yaw_sigma, shape),
        "accel": truth["accel"] + rng.normal(0, n.accel_sigma, shape),
        "gnss_quality": np.full(shape, GNSS_QUALITY_DGPS, np.int8),
    }
    return out, _dropouts(t, n, rng)
