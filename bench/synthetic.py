"""Synthetic fleet frames for load benches: vehicle ``i % vehicles`` on a straight line at
10 m/s, 10 Hz, each on its own heading (odd vehicles optionally report a small yaw rate)."""

from __future__ import annotations

import math

from schemas.sensor import SensorFrame


def frame(i: int, vehicles: int, heading_step: float, turning_yaw_rate: float = 0.0) -> SensorFrame:
    """The ``i``-th frame of the fleet, vehicles interleaved."""
    seq, v = divmod(i, vehicles)
    heading = math.remainder(heading_step * v, 2 * math.pi)
    return SensorFrame(
        f"v{v}",
        seq,
        10**9 + seq * 10**8,
        100 * math.cos(heading) + seq * math.cos(heading),
        seq * math.sin(heading),
        10.0,
        heading,
        turning_yaw_rate if v % 2 else 0.0,
        0.0,
    )
