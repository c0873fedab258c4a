"""Driving behaviour: per-vehicle speed and yaw-rate command profiles, manoeuvre by manoeuvre.

Each manoeuvre is a short segment whose profiles are smooth (cosine speed ramps, cosine
yaw-rate ramps for curve entry/exit, minimum-jerk lateral profiles for lane changes), so
the kinematic model driven by them has bounded jerk like a real driver. Lateral
acceleration stays within ``max_lat_accel``; the profiles hold what a learned model can
exploit beyond constant velocity / constant turn rate (braking before stops, turn entry
and exit, the S-shaped yaw rate of a lane change).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Manoeuvre labels carried in the truth table.
MANOEUVRES: tuple[str, ...] = (
    "cruise",
    "speed_change",
    "curve",
    "turn",
    "lane_change",
    "stop",
    "traffic",
)
_WEIGHTS = np.array([0.22, 0.16, 0.20, 0.12, 0.15, 0.09, 0.06])
_CRUISE_SPEEDS = (7.0, 20.0)  # m/s, urban to suburban


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Comfort limits of the simulated drivers."""

    max_lat_accel: float = 3.0
    """m/s^2; curves and turns are sampled below this."""
    max_accel: float = 2.5
    max_decel: float = 3.0


class _Builder:
    """Accumulates segments of one vehicle at a fixed step."""

    def __init__(self, dt: float, v0: float, rng: np.random.Generator, limits: Limits) -> None:
        self.dt, self.v, self.rng, self.lim = dt, v0, rng, limits
        self.speeds: list[np.ndarray] = []
        self.yaws: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.n = 0

    def _emit(self, v: np.ndarray, w: np.ndarray, label: str) -> None:
        self.speeds.append(v)
        self.yaws.append(w)
        self.labels.append(np.full(len(v), MANOEUVRES.index(label), np.int8))
        self.n += len(v)
        if len(v):
            self.v = float(v[-1])

    def _steps(self, seconds: float) -> int:
        return max(1, round(seconds / self.dt))

    def hold(self, seconds: float, label: str, yaw_rate: float = 0.0) -> None:
        n = self._steps(seconds)
        self._emit(np.full(n, self.v), np.full(n, yaw_rate), label)

    def ramp_speed(self, target: float, accel: float, label: str) -> None:
        """Cosine speed ramp whose peak acceleration is ``accel``."""
        dv = target - self.v
        if abs(dv) < 1e-3:
            return
        seconds = math.pi * abs(dv) / (2 * accel)
        n = self._steps(seconds)
        tau = np.arange(1, n + 1) / n
        v = self.v + dv * (1 - np.cos(np.pi * tau)) / 2
        self._emit(v, np.zeros(n), label)

    def arc(self, angle: float, lat_accel: float, ramp_s: float, label: str) -> None:
        """Turn by ``angle`` rad at the current speed: cosine ramp in, hold, ramp out."""
        v = max(self.v, 0.5)
        w_max = lat_accel / v
        hold_s = abs(angle) / w_max - ramp_s
        if hold_s < 0:
            hold_s, w_max = 0.0, abs(angle) / ramp_s
        nr, nh = self._steps(ramp_s), self._steps(hold_s) if hold_s > 0 else 0
        up = w_max * (1 - np.cos(np.pi * np.arange(1, nr + 1) / nr)) / 2
        w = np.concatenate([up, np.full(nh, w_max), up[::-1]]) * math.copysign(1.0, angle)
        self._emit(np.full(len(w), self.v), w, label)

    def lane_change(self, offset: float, seconds: float) -> None:
        """Minimum-jerk lateral offset over ``seconds``: yaw rate = lateral accel / v."""
        n = self._steps(seconds)
        tau = np.arange(1, n + 1) / n
        d_dd = offset / seconds**2 * (60 * tau - 180 * tau**2 + 120 * tau**3)
        self._emit(np.full(n, self.v), d_dd / self.v, "lane_change")

    # --- manoeuvres --------------------------------------------------------------------

    def next_manoeuvre(self) -> None:
        rng, lim = self.rng, self.lim
        slow = self.v < 6.0
        p = _WEIGHTS.copy()
        if slow:  # no lane changes or fast bends from (near) standstill
            p[[2, 4]] = 0.0
            p[1] += 0.3
        name = MANOEUVRES[rng.choice(len(MANOEUVRES), p=p / p.sum())]
        if name == "cruise":
            radius = rng.uniform(600, 3000) * rng.choice((-1, 1))  # gentle road curvature
            self.hold(rng.uniform(3, 12), "cruise", self.v / radius)
        elif name == "speed_change":
            target = rng.uniform(*_CRUISE_SPEEDS)
            accel = rng.uniform(0.6, lim.max_accel if target > self.v else lim.max_decel)
            self.ramp_speed(target, accel, "speed_change")
            self.hold(rng.uniform(1, 4), "cruise")
        elif name == "curve":
            angle = math.radians(rng.uniform(20, 100)) * rng.choice((-1, 1))
            lat = rng.uniform(0.8, lim.max_lat_accel)
            self.arc(angle, lat, rng.uniform(1.5, 3.0), "curve")
        elif name == "turn":
            self.ramp_speed(rng.uniform(4.0, 7.0), rng.uniform(1.0, lim.max_decel), "turn")
            angle = math.radians(rng.normal(90, 8)) * rng.choice((-1, 1))
            self.arc(angle, rng.uniform(1.5, lim.max_lat_accel), rng.uniform(1.0, 1.6), "turn")
            self.ramp_speed(rng.uniform(*_CRUISE_SPEEDS), rng.uniform(1.0, lim.max_accel), "turn")
        elif name == "lane_change":
            offset = rng.uniform(3.0, 3.7) * rng.choice((-1, 1))
            self.hold(rng.uniform(0.5, 2.0), "cruise")
            self.lane_change(offset, rng.uniform(3.0, 6.0))
        elif name == "stop":
            self.ramp_speed(0.0, rng.uniform(1.2, lim.max_decel), "stop")
            self.hold(rng.uniform(2, 12), "stop")
            self.ramp_speed(rng.uniform(*_CRUISE_SPEEDS), rng.uniform(1.0, lim.max_accel), "stop")
        else:  # traffic: creeping stop-and-go
            for _ in range(rng.integers(2, 5)):
                self.ramp_speed(0.0, rng.uniform(1.0, 2.5), "traffic")
                self.hold(rng.uniform(1, 5), "traffic")
                self.ramp_speed(rng.uniform(2.5, 7.0), rng.uniform(0.8, 2.0), "traffic")
                self.hold(rng.uniform(0.5, 3), "traffic")


def profiles(
    n_steps: int, dt: float, rng: np.random.Generator, limits: Limits
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Speed (m/s), commanded yaw rate (rad/s) and manoeuvre index, each ``n_steps`` long."""
    b = _Builder(dt, rng.uniform(*_CRUISE_SPEEDS), rng, limits)
    while b.n < n_steps:
        b.next_manoeuvre()
    cat = np.concatenate
    return cat(b.speeds)[:n_steps], cat(b.yaws)[:n_steps], cat(b.labels)[:n_steps]
