"""Open-loop send schedule: which record goes out when, precise waiting, lag statistics.

Times here are ``time.perf_counter_ns`` (monotonic); the wall-clock produce stamp is taken
separately with ``schemas.headers.now_ns``. Schedule lag = actual send time - due time.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from schemas.errors import ConfigError
from schemas.stats import percentile


@dataclass(frozen=True)
class Plan:
    """Records of one lap in send order: frame row ranges and due offsets (ns from start).

    ``rows[k]`` are the log rows (same vehicle, consecutive) of record k; ``due_ns[k]`` is
    its due time within the lap at speed 1 (from t_event) — rate mode rescales later.
    """

    rows: list[np.ndarray]
    t_event_due_ns: np.ndarray
    frames_before: np.ndarray
    """Frames in the lap before record k (for fixed-rate schedules)."""
    lap_span_ns: int
    """How far t_event shifts per lap: the log's span plus one typical frame interval."""
    seq_stride: int
    """How far seq shifts per lap, so every vehicle's seq keeps increasing."""
    frames: int


def make_plan(log: pa.Table, batch: int = 1) -> Plan:
    """Group each vehicle's consecutive frames into records of ``batch``; order by due time.

    A record is due when its newest frame's t_event is due; ties keep vehicle order, and a
    vehicle's records are always in seq order.
    """
    if log.num_rows == 0:
        raise ConfigError("the sensor log is empty: nothing to replay")
    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    vid = np.asarray(log.column("vehicle_id").to_pylist(), dtype=object).astype(str)
    t = log.column("t_event_ns").to_numpy()
    seq = log.column("seq").to_numpy()
    order = np.lexsort((seq, t, vid))  # per vehicle by (t, seq)
    starts = np.flatnonzero(np.r_[True, vid[order][1:] != vid[order][:-1]])
    ends = np.r_[starts[1:], len(order)]
    rows: list[np.ndarray] = []
    for s, e in zip(starts, ends, strict=True):
        rows.extend(order[i : min(i + batch, e)] for i in range(s, e, batch))
    last_t = np.array([t[r[-1]] for r in rows], dtype=np.int64)
    first_vid = np.array([vid[r[0]] for r in rows])
    rec_order = np.lexsort((first_vid, last_t))
    rows = [rows[i] for i in rec_order]
    sizes = np.array([len(r) for r in rows], dtype=np.int64)
    t0 = int(t.min())
    diffs = np.diff(np.sort(t[order][: min(len(order), 10_000)]))
    step = int(np.median(diffs[diffs > 0])) if (diffs > 0).any() else 100_000_000
    return Plan(
        rows=rows,
        t_event_due_ns=last_t[rec_order] - t0,
        frames_before=np.r_[0, np.cumsum(sizes)[:-1]],
        lap_span_ns=int(t.max()) - t0 + step,
        seq_stride=int(seq.max()) - int(seq.min()) + 1,
        frames=int(sizes.sum()),
    )


def parse_speed(text: str) -> float:
    """``"max"`` -> inf, else a positive replay speed factor."""
    if text.strip().lower() == "max":
        return float("inf")
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"speed must be a number or 'max', got {text!r}") from None
    if not value > 0:
        raise ConfigError(f"speed must be > 0 (or 'max'), got {text!r}")
    return value


class Pacer:
    """Waits until a monotonic deadline: coarse sleep, then a short spin for precision.

    Sleeping until ``spin_ns`` before the deadline keeps the CPU idle at low rates; the
    spin absorbs the scheduler's wake-up jitter. ``stop`` wakes a sleeping wait at once.
    """

    def __init__(self, spin_ns: int = 300_000) -> None:
        self.spin_ns = spin_ns
        self.stop = threading.Event()

    def wait_until(self, deadline_ns: int) -> int:
        """Return the monotonic time at which the wait ended (>= deadline unless stopped)."""
        now = time.perf_counter_ns()
        remaining = deadline_ns - now
        if remaining > self.spin_ns:
            if self.stop.wait((remaining - self.spin_ns) / 1e9):
                return time.perf_counter_ns()
            now = time.perf_counter_ns()
        while now < deadline_ns:
            now = time.perf_counter_ns()
        return now


class LagStats:
    """Schedule-lag samples (ns): a uniform reservoir of at most ``capacity`` samples."""

    def __init__(self, capacity: int = 1_000_000, seed: int = 0) -> None:
        self.capacity = capacity
        self.count = 0
        self.max_ns = 0
        self._samples: list[int] = []
        self.recent: list[int] = []
        """Samples since the progress display last drained them."""
        self._rng = random.Random(seed)

    def add(self, lag_ns: int) -> None:
        self.count += 1
        if len(self.recent) < 100_000:
            self.recent.append(lag_ns)
        if lag_ns > self.max_ns:
            self.max_ns = lag_ns
        if len(self._samples) < self.capacity:
            self._samples.append(lag_ns)
        else:
            j = self._rng.randrange(self.count)
            if j < self.capacity:
                self._samples[j] = lag_ns

    def percentile_ms(self, q: float) -> float | None:
        return _percentile_ms(self._samples, q)

    def drain_recent(self) -> tuple[float | None, float | None]:
        """p50 and p99 (ms) of the samples since the last call."""
        out = _percentile_ms(self.recent, 50), _percentile_ms(self.recent, 99)
        self.recent = []
        return out


def _percentile_ms(samples: list[int], q: float) -> float | None:
    value = percentile(samples, q)
    return None if value is None else value / 1e6
