"""Per-vehicle windows with delayed labels: frames in, (history, future positions) out.

A frame at t becomes the newest frame ("anchor") of a sample once a frame at
t + max horizon (+ allowed lateness) has arrived. Ground truth at each horizon is
interpolated in time between the two frames around it, never taken by index, so irregular
and missing frames give correct labels or no sample at all (see the gap limits; the history
gap limit is ``InputSpec.max_gap_s``, the same one serving applies).
"""

from __future__ import annotations

import bisect
import itertools
import zlib
from dataclasses import dataclass, field

import numpy as np

from schemas.model_spec import InputSpec
from schemas.sensor import SensorFrame
from trainer.config import WindowConfig

NS = 1_000_000_000


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

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Vehicle:
    times: list[int] = field(default_factory=list)
    frames: list[SensorFrame] = field(default_factory=list)
    produced: list[int] = field(default_factory=list)
    emitted_until: int = -1


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
        hist = times[a + 1 - n : a + 1]
        max_gap = round(self.spec.max_gap_s * NS)  # the serving contract's limit
        if any(b - a_ > max_gap for a_, b in itertools.pairwise(hist)):
            self.stats.skipped_history += 1
            return None
        label_gap = round(self.config.max_label_gap_s * NS)
        target = np.empty((len(self._horizons_ns), 2), dtype=np.float32)
        right = a
        for k, h in enumerate(self._horizons_ns):
            tt = t0 + h
            j = bisect.bisect_left(times, tt, lo=a)
            if j < len(times) and times[j] == tt:
                target[k] = (v.frames[j].x, v.frames[j].y)
                right = j
                continue
            lo, hi = v.frames[j - 1], v.frames[j]
            if times[j] - times[j - 1] > label_gap:
                self.stats.skipped_label += 1
                return None
            w = (tt - times[j - 1]) / (times[j] - times[j - 1])
            target[k] = (lo.x + w * (hi.x - lo.x), lo.y + w * (hi.y - lo.y))
            right = j
        window = np.array(
            [
                ((t - t0) / NS, f.x, f.y, f.speed, f.heading, f.yaw_rate, f.accel)
                for t, f in zip(hist, v.frames[a + 1 - n : a + 1], strict=True)
            ],
            dtype=np.float32,
        )
        return Sample(
            vehicle_id=vehicle_id,
            t_anchor_ns=t0,
            t_label_ns=times[right],
            t_label_produce_ns=v.produced[right],
            window=window,
            target=target,
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
