"""Per-vehicle history windows in the model's input layout, and recent ground truth.

Windows, the gap test and labels are the :mod:`schemas.window` contract the trainer learns
from: a window with a gap wider than the spec's ``max_gap_s`` never goes to the model, and
:meth:`HistoryStore.unusable` says "gap" until the gap slides out of the window. Ground
truth for swap validation and the never-worse gate: every ``truth_every``-th gap-free window
of a vehicle is kept until the vehicle's position at every horizon has arrived, then the
window, its time-interpolated future positions and when it was labelled go into a ring.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from schemas import plausibility, window
from schemas.model_spec import InputSpec
from schemas.sensor import SensorFrame

NS = window.NS


@dataclass(slots=True)
class _Awaiting:
    """A window waiting for its future positions; ``pred`` is what the model answered for it
    while its truth did not exist yet (set by :meth:`HistoryStore.score_awaiting`)."""

    t0: int
    window: np.ndarray
    pred: np.ndarray | None = None


@dataclass(slots=True)
class _Vehicle:
    partition: int
    rows: deque[tuple[float, ...]]
    track: deque[tuple[int, float, float]]
    clock: plausibility.VehicleClock
    pending: deque[_Awaiting] = field(default_factory=deque)
    last_t_ns: int = -1
    count: int = 0


class HistoryStore:
    """History of every vehicle this instance owns; dropped per partition on rebalance."""

    def __init__(
        self,
        spec: InputSpec,
        truth_capacity: int = 512,
        truth_every: int = 5,
        clock: Callable[[], float] = time.monotonic,
        limits: plausibility.Limits | None = None,
    ) -> None:
        self.spec = spec
        self.limits = limits or plausibility.Limits()
        self.truth_every = truth_every
        self._clock = clock
        self._vehicles: dict[str, _Vehicle] = {}
        self._truth: deque[tuple[np.ndarray, np.ndarray, float, np.ndarray | None]] = deque(
            maxlen=truth_capacity
        )
        self._truth_lock = threading.Lock()
        self._unscored: deque[_Awaiting] = deque(maxlen=truth_capacity)
        """Awaiting windows the model has not predicted yet (appended here, scored off-loop)."""

    def __len__(self) -> int:
        return len(self._vehicles)

    @property
    def gap_ns(self) -> int:
        """Widest gap allowed inside a window: the serving model's ``max_gap_s``."""
        return window.gap_ns(self.spec.max_gap_s)

    def _track_len(self) -> int:
        return int(self.spec.max_horizon_s * self.spec.rate_hz * 3) + self.spec.history + 8

    def set_spec(self, spec: InputSpec) -> None:
        """Adopt a new model's spec; longer windows keep what is there and warm up the rest."""
        if spec == self.spec:
            return
        self.spec = spec
        for v in self._vehicles.values():
            v.rows = deque(v.rows, maxlen=spec.history)
            v.track = deque(v.track, maxlen=self._track_len())
            v.pending.clear()
        self._unscored.clear()
        with self._truth_lock:
            self._truth.clear()

    def add(self, f: SensorFrame, partition: int) -> str:
        """Record a frame; returns 'ok', 'gap' (wider than max_gap_s since the previous frame:
        pending ground truth is dropped, windows over it are unusable), 'out_of_order', or
        an ``implausible_*`` reason (:mod:`schemas.plausibility`: the frame is not kept)."""
        v = self._vehicles.get(f.vehicle_id)
        if v is None:
            v = _Vehicle(
                partition,
                deque(maxlen=self.spec.history),
                deque(maxlen=self._track_len()),
                plausibility.VehicleClock(self.limits),
            )
            self._vehicles[f.vehicle_id] = v
        v.partition = partition
        judged = v.clock.judge(f.seq, f.t_event_ns, f.x, f.y)
        if judged == plausibility.RESTART:  # a confirmed jump: the old track is another one
            v.rows.clear()
            v.track.clear()
            v.pending.clear()
            v.last_t_ns = -1
        elif judged != plausibility.OK:
            return judged
        status = "ok"
        if v.last_t_ns >= 0 and f.t_event_ns - v.last_t_ns > self.gap_ns:
            v.track.clear()  # no ground truth interpolated across the gap
            v.pending.clear()
            status = "gap"
        v.last_t_ns = f.t_event_ns
        v.rows.append(
            (f.t_event_ns, f.x, f.y, f.speed, f.heading, f.yaw_rate, f.accel)  # type: ignore[arg-type]
        )
        v.track.append((f.t_event_ns, f.x, f.y))
        v.count += 1
        self._label(v)
        full = len(v.rows) == self.spec.history
        if full and v.count % self.truth_every == 0 and not self._has_gap(v):
            awaiting = _Awaiting(f.t_event_ns, self._window(v))
            v.pending.append(awaiting)
            self._unscored.append(awaiting)
        return status

    def unusable(self, vehicle_id: str) -> str | None:
        """Why the vehicle's window cannot go to the model ('warmup' or 'gap'), else None."""
        v = self._vehicles.get(vehicle_id)
        if v is None or len(v.rows) < self.spec.history:
            return "warmup"
        return "gap" if self._has_gap(v) else None

    def _has_gap(self, v: _Vehicle) -> bool:
        return window.has_gap([r[0] for r in v.rows], self.spec.max_gap_s)

    def window(self, vehicle_id: str) -> np.ndarray | None:
        """Model input ``[history, 7]`` ending at the newest frame, or None while warming up."""
        v = self._vehicles.get(vehicle_id)
        if v is None or len(v.rows) < self.spec.history:
            return None
        return self._window(v)

    def _window(self, v: _Vehicle) -> np.ndarray:
        return window.window_rows(v.rows)

    def _label(self, v: _Vehicle) -> None:
        """Turn pending windows whose longest horizon has arrived into ground truth."""
        horizon_ns = round(self.spec.max_horizon_s * NS)
        newest = v.track[-1][0]
        ready = 0
        while ready < len(v.pending) and v.pending[ready].t0 + horizon_ns <= newest:
            ready += 1
        if not ready:
            return
        done = [v.pending.popleft() for _ in range(ready)]
        track = np.array(v.track, dtype=np.float64)
        targets, ok = window.labels(
            track[:, 0].astype(np.int64),
            track[:, 1],
            track[:, 2],
            [a.t0 for a in done],
            self.spec.horizons_s,
        )
        now = self._clock()
        with self._truth_lock:
            for a, target, good in zip(done, targets.astype(np.float32), ok, strict=True):
                if good:
                    self._truth.append((a.window, target, now, a.pred))

    def truth(self, within_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Recent ground truth: windows ``[N, T, 7]`` and positions ``[N, K, 2]``, oldest
        first; only what was labelled in the last ``within_s`` seconds if given."""
        windows, targets, _ = self.scored_truth(within_s)
        return windows, targets

    def scored_truth(
        self, within_s: float | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`truth` and what the model answered for each window before its truth
        existed, ``[N, K, 2]`` (NaN where no model had predicted it): test, then train."""
        with self._truth_lock:
            items = list(self._truth)
        if within_s is not None:
            since = self._clock() - within_s
            items = [it for it in items if it[2] >= since]
        k = len(self.spec.horizons_s)
        if not items:
            empty = np.zeros((0, k, 2), np.float32)
            return np.zeros((0, self.spec.history, 7), np.float32), empty, empty
        nan = np.full((k, 2), np.nan, np.float32)
        preds = [nan if p is None or p.shape != nan.shape else p for *_, p in items]
        return np.stack([it[0] for it in items]), np.stack([it[1] for it in items]), np.stack(preds)

    def score_awaiting(self, predict: Callable[[np.ndarray], np.ndarray]) -> int:
        """Predict every window still waiting for its truth (off the serving loop); returns
        how many. Windows of another length than the model's are left unscored."""
        todo: list[_Awaiting] = []
        while self._unscored:
            try:
                todo.append(self._unscored.popleft())
            except IndexError:  # emptied by a concurrent set_spec
                break
        todo = [a for a in todo if a.window.shape[0] == self.spec.history]
        if not todo:
            return 0
        out = predict(np.stack([a.window for a in todo]))
        for a, pred in zip(todo, out, strict=True):
            a.pred = np.asarray(pred, np.float32)
        return len(todo)

    def add_truth(self, windows: np.ndarray, targets: np.ndarray) -> None:
        """Seed ground truth directly (tests, or a warm restart)."""
        now = self._clock()
        with self._truth_lock:
            self._truth.extend((w, t, now, None) for w, t in zip(windows, targets, strict=True))

    def drop_partitions(self, partitions: set[int]) -> int:
        """Forget vehicles last seen on ``partitions`` (revoked); returns how many."""
        gone = [vid for vid, v in self._vehicles.items() if v.partition in partitions]
        for vid in gone:
            del self._vehicles[vid]
        return len(gone)
