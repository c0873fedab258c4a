"""Per-vehicle windows with delayed labels: frames in, (history, future positions) out.

A frame at t becomes the newest frame ("anchor") of a sample once a frame at
t + max horizon (+ allowed lateness) has arrived. The window layout, the history gap test
and the time-interpolated labels are the shared contract of :mod:`schemas.window`, so
serving, the report and the importer's evaluation read windows and truth the same way.
"""

from __future__ import annotations

import bisect
import zlib
from dataclasses import dataclass, field

import numpy as np

from schemas import plausibility, window
from schemas.model_spec import InputSpec
from schemas.sensor import SensorFrame
from trainer.config import WindowConfig

NS = window.NS


def is_holdout(vehicle_id: str, fraction: float) -> bool:
    """Deterministic per-vehicle split (same answer in every process and run)."""
    return (zlib.crc32(vehicle_id.encode()) % 10_000) < fraction * 10_000


@dataclass(frozen=True, slots=True)
class Sample:
    """One training/eval example; ``window`` follows the schemas.model_spec input contract."""

    vehicle_id: str
    t_anchor_ns: int
    t_label_ns: int
    """t_event_ns of the newest ground-truth frame used (sensor clock)."""
    t_label_produce_ns: int
    """Wall-clock produce stamp of that frame (for model freshness)."""
    window: np.ndarray
    """float32 [history, 7]."""
    target: np.ndarray
    """float32 [horizons, 2] absolute x/y."""
    holdout: bool


@dataclass
class WindowStats:
    samples: int = 0
    skipped_history: int = 0
    skipped_label: int = 0
    duplicates: int = 0
    too_late: int = 0
    implausible: int = 0
    """Frames dropped by :mod:`schemas.plausibility` (time/seq jumps, teleports)."""
    restarts: int = 0
    """Confirmed jumps: the vehicle's buffer started over."""

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Vehicle:
    times: list[int] = field(default_factory=list)
    frames: list[SensorFrame] = field(default_factory=list)
    produced: list[int] = field(default_factory=list)
    emitted_until: int = -1
    clock: plausibility.VehicleClock = field(
        default_factory=lambda: plausibility.VehicleClock(plausibility.Limits())
    )


class Windower:
    """Turns each vehicle's frames (any arrival order) into samples as labels arrive."""

    def __init__(self, spec: InputSpec, config: WindowConfig | None = None) -> None:
        self.spec = spec
        self.config = config or WindowConfig()
        self.stats = WindowStats()
        self._vehicles: dict[str, _Vehicle] = {}
        self.newest_ns = 0
        """Newest t_event_ns seen from any vehicle (drives idle eviction)."""
        self._horizons_ns = [round(h * NS) for h in spec.horizons_s]
        self._wait_ns = self._horizons_ns[-1] + round(self.config.allowed_lateness_s * NS)

    def __len__(self) -> int:
        return len(self._vehicles)

    def add(self, frame: SensorFrame, produced_ns: int = 0) -> list[Sample]:
        """Buffer one frame; return the samples whose label time it completed."""
        v = self._vehicles.setdefault(frame.vehicle_id, _Vehicle())
        judged = v.clock.judge(frame.seq, frame.t_event_ns, frame.x, frame.y)
        if judged == plausibility.RESTART:
            self.stats.restarts += 1
            v = self._vehicles[frame.vehicle_id] = _Vehicle(clock=v.clock)
        elif judged not in (plausibility.OK, plausibility.OUT_OF_ORDER):
            self.stats.implausible += 1
            return []
        t = frame.t_event_ns
        i = bisect.bisect_left(v.times, t)
        if i < len(v.times) and v.times[i] == t:
            self.stats.duplicates += 1
            return []
        if t <= v.emitted_until:
            self.stats.too_late += 1
            if i == 0:  # older than every retained frame: in no future history
                return []
            # otherwise it may still complete the history of a later anchor
        self.newest_ns = max(self.newest_ns, t)
        v.times.insert(i, t)
        v.frames.insert(i, frame)
        v.produced.insert(i, produced_ns)
        out = self._emit(frame.vehicle_id, v)
        self._prune(v)
        return out

    def add_many(self, frames: list[SensorFrame], produced_ns: int = 0) -> list[Sample]:
        out: list[Sample] = []
        for f in frames:
            out.extend(self.add(f, produced_ns))
        return out

    def evict_idle(self, older_than_ns: int) -> int:
        """Drop vehicles whose newest frame is older than ``older_than_ns``; return count."""
        idle = [k for k, v in self._vehicles.items() if v.times[-1] < older_than_ns]
        for k in idle:
            del self._vehicles[k]
        return len(idle)

    def _emit(self, vehicle_id: str, v: _Vehicle) -> list[Sample]:
        ready_until = v.times[-1] - self._wait_ns
        start = bisect.bisect_right(v.times, v.emitted_until)
        stop = bisect.bisect_right(v.times, ready_until)
        out = []
        for a in range(start, stop):
            sample = self._sample(vehicle_id, v, a)
            v.emitted_until = v.times[a]
            if sample is not None:
                self.stats.samples += 1
                out.append(sample)
        return out

    def _sample(self, vehicle_id: str, v: _Vehicle, a: int) -> Sample | None:
        n = self.spec.history
        if a + 1 < n:
            self.stats.skipped_history += 1
            return None
        times = v.times
        t0 = times[a]
        hist = v.frames[a + 1 - n : a + 1]
        if window.has_gap(times[a + 1 - n : a + 1], self.spec.max_gap_s):
            self.stats.skipped_history += 1
            return None
        # the track from the anchor on: the frames the labels interpolate between
        end = min(bisect.bisect_left(times, t0 + self._horizons_ns[-1], lo=a) + 1, len(times))
        track = v.frames[a:end]
        target, ok = window.labels(
            times[a:end],
            [f.x for f in track],
            [f.y for f in track],
            [t0],
            self.spec.horizons_s,
            self.config.max_label_gap_s,
        )
        if not ok[0]:
            self.stats.skipped_label += 1
            return None
        right = end - 1
        rows = [(f.t_event_ns, f.x, f.y, f.speed, f.heading, f.yaw_rate, f.accel) for f in hist]
        return Sample(
            vehicle_id=vehicle_id,
            t_anchor_ns=t0,
            t_label_ns=times[right],
            t_label_produce_ns=v.produced[right],
            window=window.window_rows(rows),
            target=target[0].astype(np.float32),
            holdout=is_holdout(vehicle_id, self.config.holdout_fraction),
        )

    def _prune(self, v: _Vehicle) -> None:
        first_pending = bisect.bisect_right(v.times, v.emitted_until)
        keep = max(
            0, first_pending - (self.spec.history - 1), len(v.times) - self.config.max_frames
        )
        if keep:
            del v.times[:keep], v.frames[:keep], v.produced[:keep]


def stack(samples: list[Sample]) -> tuple[np.ndarray, np.ndarray]:
    """Samples -> (windows [B, T, 7], targets [B, H, 2]) float32 arrays."""
    return (
        np.stack([s.window for s in samples]).astype(np.float32, copy=False),
        np.stack([s.target for s in samples]).astype(np.float32, copy=False),
    )
