"""Fleet simulator: kinematic bicycle vehicles, ground truth and a noisy sensor log.

``simulate(config)`` returns ``(log, truth)``: the log has the canonical sensor schema
(``schemas.sensor.ARROW_SCHEMA``), the truth the noise-free state at every sensor tick
(a superset of the log's keys: ticks lost to GNSS dropouts are in the truth only).
Everything is vectorised over vehicles; one seed gives the same fleet bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ingest.behaviour import MANOEUVRES, Limits, profiles
from ingest.sensors import SensorNoise, measure
from schemas.config import setting
from schemas.errors import ConfigError

#: Noise-free state at each sensor tick, keyed like the log by (vehicle_id, t_event_ns).
TRUTH_SCHEMA = pa.schema(
    [
        pa.field("vehicle_id", pa.string(), nullable=False),
        pa.field("t_event_ns", pa.int64(), nullable=False),
        pa.field("x", pa.float64(), nullable=False),
        pa.field("y", pa.float64(), nullable=False),
        pa.field("speed", pa.float64(), nullable=False),
        pa.field("heading", pa.float64(), nullable=False),
        pa.field("yaw_rate", pa.float64(), nullable=False),
        pa.field("accel", pa.float64(), nullable=False),
        pa.field("manoeuvre", pa.string(), nullable=False),
    ],
    metadata={b"drivestream.schema": b"sensor_truth/1"},
)

WHEELBASE_M = 2.8
MAX_STEER_RAD = 0.6


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    """What fleet to simulate and how its sensors behave."""

    vehicles: int = setting(16, "number of vehicles")
    duration_s: float = setting(180.0, "simulated seconds per vehicle")
    seed: int = setting(0, "random seed (same seed, same log)")
    rate_hz: float = setting(10.0, "sensor frame rate")
    step_hz: float = setting(100.0, "integration rate of the model")
    start_ns: int = setting(1_767_225_600_000_000_000, "sensor clock at t=0 (ns)")
    origin_lat: float = setting(48.1372, "lat of the local origin")
    origin_lon: float = setting(11.5755, "lon of the local origin")
    id_prefix: str = setting("sim-", "vehicle id prefix")
    gnss_noise_m: float = setting(0.5, "GNSS horizontal RMS noise, m")
    gnss_bias_m: float = setting(0.2, "GNSS drifting bias RMS, m")
    dropouts_per_min: float = setting(0.4, "GNSS dropouts per minute")
    outlier_prob: float = setting(0.002, "probability a fix is wild")

    def __post_init__(self) -> None:
        if self.vehicles < 1:
            raise ConfigError(f"vehicles must be >= 1, got {self.vehicles}")
        if self.duration_s <= 0:
            raise ConfigError(f"duration_s must be > 0, got {self.duration_s}")
        if not 0 < self.rate_hz <= 100:
            raise ConfigError(f"rate_hz must be in (0, 100], got {self.rate_hz}")
        if self.step_hz < 5 * self.rate_hz:
            raise ConfigError(f"step_hz must be >= 5 x rate_hz, got {self.step_hz}")
        if self.gnss_noise_m < 0 or self.gnss_bias_m < 0:
            raise ConfigError("gnss_noise_m and gnss_bias_m must be >= 0")
        if self.dropouts_per_min < 0 or not 0 <= self.outlier_prob < 1:
            raise ConfigError("dropouts_per_min must be >= 0 and outlier_prob in [0, 1)")
        if self.start_ns < 0:
            raise ConfigError(f"start_ns must be >= 0, got {self.start_ns}")

    def noise(self) -> SensorNoise:
        return SensorNoise(
            gnss_noise_m=self.gnss_noise_m,
            gnss_bias_m=self.gnss_bias_m,
            dropouts_per_min=self.dropouts_per_min,
            outlier_prob=self.outlier_prob,
        )


@dataclass(frozen=True)
class Trajectories:
    """Fine-step truth of the fleet, arrays shaped [vehicles, steps]."""

    dt: float
    x: np.ndarray
    y: np.ndarray
    heading: np.ndarray  # unwrapped
    speed: np.ndarray
    yaw_rate: np.ndarray
    accel: np.ndarray
    manoeuvre: np.ndarray


def integrate(config: SimConfig, rng: np.random.Generator) -> Trajectories:
    """Drive every vehicle's command profiles through a kinematic bicycle model."""
    dt = 1.0 / config.step_hz
    n = int(np.ceil(config.duration_s * config.step_hz)) + 2
    cols = [profiles(n, dt, np.random.default_rng(s), Limits()) for s in _seeds(rng, config)]
    v = np.stack([c[0] for c in cols])
    w_cmd = np.stack([c[1] for c in cols])
    label = np.stack([c[2] for c in cols])
    # Bicycle model (rear-axle reference): steering from the commanded yaw rate, limited.
    steer = np.arctan2(WHEELBASE_M * w_cmd, np.maximum(v, 0.1))
    steer = np.clip(steer, -MAX_STEER_RAD, MAX_STEER_RAD)
    w = v * np.tan(steer) / WHEELBASE_M
    psi0 = rng.uniform(-np.pi, np.pi, (config.vehicles, 1))
    # Trapezoidal heading, midpoint position: second-order accurate at the fine step.
    dpsi = 0.5 * (w[:, 1:] + w[:, :-1]) * dt
    psi = psi0 + np.concatenate([np.zeros((config.vehicles, 1)), np.cumsum(dpsi, 1)], 1)
    psi_mid = 0.5 * (psi[:, 1:] + psi[:, :-1])
    ds = 0.5 * (v[:, 1:] + v[:, :-1]) * dt
    start = rng.uniform(-2000, 2000, (config.vehicles, 2))
    zero = np.zeros((config.vehicles, 1))
    x = start[:, :1] + np.concatenate([zero, np.cumsum(ds * np.cos(psi_mid), 1)], 1)
    y = start[:, 1:] + np.concatenate([zero, np.cumsum(ds * np.sin(psi_mid), 1)], 1)
    accel = np.gradient(v, dt, axis=1)
    return Trajectories(dt, x, y, psi, v, w, accel, label)


def _seeds(rng: np.random.Generator, config: SimConfig) -> list[int]:
    return [int(s) for s in rng.integers(0, 2**63 - 1, config.vehicles)]


def _sample(traj: Trajectories, t: np.ndarray) -> dict[str, np.ndarray]:
    """Linear interpolation of the fine truth at tick times ``t`` [vehicles, ticks]."""
    pos = t / traj.dt
    i = np.clip(np.floor(pos).astype(np.int64), 0, traj.x.shape[1] - 2)
    f = pos - i

    def at(a: np.ndarray) -> np.ndarray:
        lo = np.take_along_axis(a, i, 1)
        hi = np.take_along_axis(a, i + 1, 1)
        return lo + (hi - lo) * f

    out = {k: at(getattr(traj, k)) for k in ("x", "y", "heading", "speed", "yaw_rate", "accel")}
    out["manoeuvre"] = np.take_along_axis(traj.manoeuvre, i, 1)
    return out


def tick_times(config: SimConfig, rng: np.random.Generator) -> np.ndarray:
    """Sensor tick times in seconds [vehicles, ticks]: per-vehicle phase, ~1 ms jitter."""
    k = np.arange(int(config.duration_s * config.rate_hz))
    phase = rng.uniform(0, 1 / config.rate_hz, (config.vehicles, 1))
    jitter = np.clip(rng.normal(0, 0.001, (config.vehicles, len(k))), -0.004, 0.004)
    return phase + k / config.rate_hz + jitter


def simulate(config: SimConfig | None = None) -> tuple[pa.Table, pa.Table]:
    """Simulate a fleet; returns ``(log, truth)`` Arrow tables sorted by time, then vehicle."""
    config = config or SimConfig()
    rng = np.random.default_rng(config.seed)
    traj = integrate(config, rng)
    t = tick_times(config, rng)
    truth = _sample(traj, t)
    ids = np.array([f"{config.id_prefix}{i:03d}" for i in range(config.vehicles)], dtype=object)
    vid = np.broadcast_to(ids[:, None], t.shape)
    t_ns = config.start_ns + np.round(t * 1e9).astype(np.int64)
    heading = (truth["heading"] + np.pi) % (2 * np.pi) - np.pi
    truth_cols = {
        "vehicle_id": vid,
        "t_event_ns": t_ns,
        "x": truth["x"],
        "y": truth["y"],
        "speed": truth["speed"],
        "heading": heading,
        "yaw_rate": truth["yaw_rate"],
        "accel": truth["accel"],
    }
    meas, keep = measure(truth_cols, t, config.rate_hz, config.noise(), rng)
    meas.update(_geodetic(meas["x"], meas["y"], config))
    order = np.lexsort((vid.ravel(), t_ns.ravel()))
    names = np.array(MANOEUVRES, dtype=object)
    truth_table = pa.table(
        {
            **{k: v.ravel()[order] for k, v in truth_cols.items()},
            "manoeuvre": names[truth["manoeuvre"].ravel()[order]],
        },
        schema=TRUTH_SCHEMA,
    )
    log_order = order[keep.ravel()[order]]
    seq = np.cumsum(keep, 1) - 1
    log_cols = {
        "vehicle_id": vid.ravel()[log_order],
        "seq": seq.ravel()[log_order],
        "t_event_ns": t_ns.ravel()[log_order],
        **{k: meas[k].ravel()[log_order] for k in meas},
    }
    from schemas.sensor import ARROW_SCHEMA

    return pa.table(log_cols, schema=ARROW_SCHEMA), truth_table


def _geodetic(x: np.ndarray, y: np.ndarray, config: SimConfig) -> dict[str, np.ndarray]:
    from ingest.geo import LocalFrame

    frame = LocalFrame(lat0=config.origin_lat, lon0=config.origin_lon)
    lat, lon = frame.to_geodetic(x.ravel(), y.ravel())
    return {"lat": lat.reshape(x.shape), "lon": lon.reshape(x.shape)}
