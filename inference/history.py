"""Per-vehicle history windows in the model's input layout, and recent ground truth.

Windows, the gap test and labels are the :mod:`schemas.window` contract the trainer learns
from: a window with a gap wider than the spec's ``max_gap_s`` never goes to the model, and
:meth:`HistoryStore.unusable` says "gap" until the gap slides out of the window. Ground
truth for swap validation and the never-worse gate: every ``truth_every``-th gap-free window
of a vehicle (at most ``truth_per_s`` a second across the fleet, so a busy fleet does not
label windows the ring would drop unused) is kept until the vehicle's position at every
horizon has arrived, then the window, its time-interpolated future positions and when it
was labelled go into a ring.

A poll at a time: :meth:`~HistoryStore.begin` takes its decoded columns,
:meth:`~HistoryStore.add` judges each frame in order (plausibility and gaps are per-vehicle
state machines) and :meth:`~HistoryStore.reserve` books a model window, in plain Python;
:meth:`~HistoryStore.end` then stores the poll's rows in the vehicles' ring buffers
(:mod:`inference.rings`) and gathers every booked window, one indexing operation each: no
array is made per frame. :meth:`~HistoryStore.label_due` labels the windows whose truth
arrived, a batch at a time, once the poll's frames are answered.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from inference.batching import Windows, stack_rows
from inference.rings import Rings
from inference.truth import TruthRing
from schemas import plausibility, window
from schemas.model_spec import InputSpec
from schemas.sensor import SensorFrame
from schemas.sensor_columns import FrameColumns

NS = window.NS
LABEL_BATCH = 32
"""Windows whose truth arrived are labelled together once this many wait..."""
LABEL_DELAY_S = 0.25
"""...or the oldest has waited this long: a poll of one frame does not label on its own."""
TRUTH_BURST = 64
"""Truth windows that may be booked at once when ``truth_per_s`` caps them."""
_Label = tuple["_Vehicle", int, int, "_Awaiting"]
"""(vehicle, first and end row of its track, the window) of a window whose truth arrived."""


@dataclass(slots=True, eq=False)
class _Awaiting:
    """A window waiting for its future positions; ``pred`` is what the model answered for it
    while its truth did not exist yet (set by :meth:`HistoryStore.score_awaiting`)."""

    t0: int
    at: int
    """The ring row of its newest frame."""
    windows: Windows
    row: int
    pred: np.ndarray | None = None


@dataclass(slots=True, eq=False)
class _Vehicle:
    slot: int
    partition: int
    clock: plausibility.VehicleClock
    pending: deque[_Awaiting] = field(default_factory=deque)
    n: int = 0
    """Rows appended so far: the ring row of the next one."""
    rows_from: int = 0
    """First row of its history (a confirmed jump starts a new one)."""
    track_from: int = 0
    """First row of the track ground truth is read from (a gap starts a new one)."""
    gap_at: int = -1
    """Newest row more than max_gap_s after the row before it."""
    last_t_ns: int = -1
    count: int = 0
    batch: int = -1
    """The batch of rows it last appended to, and how many it appended there."""
    in_batch: int = 0
    label_n: int = -1
    """``n`` when its oldest window still waiting to be labelled was due (-1: none waits):
    the track that window reads is in its ring until it appends ``_track`` rows more."""


class _Batch:
    """Rows appended, windows booked and truth windows labelled since the last store."""

    def __init__(self, frames: FrameColumns, xy: list[list[float]], n: int) -> None:
        self.frames, self.xy, self.id = frames, xy, n
        self.at: list[int] = []
        """Ring place of each row appended (:meth:`Rings.at`), and its frame in the poll."""
        self.frame: list[int] = []
        self.windows = Windows()
        self.window_slot: list[int] = []
        self.window_end: list[int] = []
        self.awaiting: list[_Awaiting] = []


class HistoryStore:
    """History of every vehicle this instance owns; dropped per partition on rebalance."""

    def __init__(
        self,
        spec: InputSpec,
        truth_capacity: int = 512,
        truth_every: int = 5,
        clock: Callable[[], float] = time.monotonic,
        limits: plausibility.Limits | None = None,
        truth_per_s: float | None = None,
    ) -> None:
        self.spec = spec
        self.limits = limits or plausibility.Limits()
        self.truth_every = truth_every
        self.truth_per_s = truth_per_s
        """At most this many truth windows booked per second (fleet-wide), if set."""
        self._tokens, self._tokens_at = float(TRUTH_BURST), clock()
        self._clock = clock
        self._vehicles: dict[str, _Vehicle] = {}
        self._derive()
        self._rings = Rings(2 * self._track)
        self._batch: _Batch | None = None
        self._batches = 0
        self._truth = TruthRing(truth_capacity)
        self._unscored: deque[_Awaiting] = deque(maxlen=truth_capacity)
        """Awaiting windows the model has not predicted yet (appended here, scored off-loop)."""
        self._labels: list[_Label] = []
        """Windows whose truth arrived, labelled together later (:meth:`label_due`)."""
        self._label_since = 0.0

    def __len__(self) -> int:
        return len(self._vehicles)

    def _derive(self) -> None:
        spec = self.spec
        self.gap_ns = window.gap_ns(spec.max_gap_s)
        """Widest gap allowed inside a window: the serving model's ``max_gap_s``."""
        self._horizon_ns = round(spec.max_horizon_s * NS)
        self._track = int(spec.max_horizon_s * spec.rate_hz * 3) + spec.history + 8
        """Track points kept for labels (at least the history). Rings hold twice that, and
        a vehicle appends at most this many rows between two stores, so every row a booked
        window or track reads is still in its ring when the rows are stored."""

    def set_spec(self, spec: InputSpec) -> None:
        """Adopt a new model's spec (between polls); longer windows keep what is there and
        warm up the rest."""
        if spec == self.spec:
            return
        old_history, old_track = self.spec.history, self._track
        self.spec = spec
        self._derive()
        keep = []
        for v in self._vehicles.values():  # what deques of the old lengths would hold
            v.rows_from = max(v.rows_from, v.n - old_history)
            v.track_from = max(v.track_from, v.n - old_track)
            v.pending.clear()
            v.label_n = -1
            keep.append((v.slot, v.n, min(v.n - min(v.rows_from, v.track_from), self._track)))
        self._rings.resize(2 * self._track, keep)
        for v in self._vehicles.values():
            v.gap_at = self._newest_gap(v)
        self._unscored.clear()
        self._labels.clear()
        self._truth.clear()

    def _newest_gap(self, v: _Vehicle) -> int:
        """The newest row of ``v``'s window more than max_gap_s after the one before it."""
        first = max(v.rows_from, v.n - self.spec.history)
        t, _ = self._rings.read(np.array([v.slot]), np.array([first]), v.n - first)
        gaps = np.flatnonzero(np.diff(t[0]) > self.gap_ns)
        return first + 1 + int(gaps[-1]) if len(gaps) else -1

    # --- one poll --------------------------------------------------------------------
    def begin(self, frames: FrameColumns) -> None:
        """Start a poll of ``frames``: add() them by index, then end()."""
        assert self._batch is None, "begin() inside a poll"
        xy = frames.values[:, :2].tolist()
        self._batches += 1
        self._batch = _Batch(frames, xy, self._batches)

    def add(self, i: int, partition: int) -> str:
        """Record frame ``i`` of the poll; returns 'ok', 'gap' (wider than max_gap_s since the
        previous frame: pending ground truth is dropped, windows over it are unusable),
        'out_of_order', or an ``implausible_*`` reason (:mod:`schemas.plausibility`: the
        frame is not kept)."""
        b = self._batch
        assert b is not None, "add() outside begin()/end()"
        f = b.frames
        vid, t = f.vehicle_id[i], f.t_event_ns[i]
        v = self._vehicles.get(vid)
        if v is None:
            v = _Vehicle(self._rings.take(), partition, plausibility.VehicleClock(self.limits))
            self._vehicles[vid] = v
        v.partition = partition
        judged = v.clock.judge(f.seq[i], t, *b.xy[i])
        if judged == plausibility.RESTART:  # a confirmed jump: the old track is another one
            v.rows_from = v.track_from = v.n
            v.gap_at = v.last_t_ns = -1
            v.pending.clear()
        elif judged != plausibility.OK:
            return judged
        status = "ok"
        if v.last_t_ns >= 0 and t - v.last_t_ns > self.gap_ns:
            v.track_from = v.gap_at = v.n  # no ground truth interpolated across the gap
            v.pending.clear()
            status = "gap"
        v.last_t_ns = t
        if v.batch != b.id:
            v.batch, v.in_batch = b.id, 0
        elif v.in_batch == self._track:  # a backlog of this vehicle: store what we have
            b = self._store()
            v.batch, v.in_batch = b.id, 0
        if v.label_n >= 0 and v.n - v.label_n >= self._track:  # label before it overwrites
            b = self._store(label=True)  # the rows of its waiting windows (rare: a backlog)
            v.batch, v.in_batch = b.id, 0
        b.at.append(self._rings.at(v.slot, v.n))
        b.frame.append(i)
        v.in_batch += 1
        v.n += 1
        v.count += 1
        if v.pending and v.pending[0].t0 + self._horizon_ns <= t:  # future positions arrived
            track = max(v.track_from, v.n - self._track)
            while v.pending and v.pending[0].t0 + self._horizon_ns <= t:
                a = v.pending.popleft()
                # read from the anchor on: the same labels as from the track's start
                if not self._labels:
                    self._label_since = self._clock()
                if v.label_n < 0:
                    v.label_n = v.n
                self._labels.append((v, max(track, a.at), v.n, a))
        if v.count % self.truth_every == 0 and self._usable(v) and self._truth_token():
            awaiting = _Awaiting(t, v.n - 1, b.windows, self._book(b, v))
            v.pending.append(awaiting)
            b.awaiting.append(awaiting)
        return status

    def _truth_token(self) -> bool:
        """May one more window become ground truth now (``truth_per_s``'s token bucket)?"""
        if self.truth_per_s is None:
            return True
        now = self._clock()
        self._tokens = min(TRUTH_BURST, self._tokens + (now - self._tokens_at) * self.truth_per_s)
        self._tokens_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def reserve(self, vehicle_id: str) -> tuple[Windows, int]:
        """Book the model window ending at the vehicle's newest frame (one it can use: see
        :meth:`unusable`); it is ``windows.array[row]`` once the poll ends."""
        b = self._batch
        assert b is not None, "reserve() outside begin()/end()"
        return b.windows, self._book(b, self._vehicles[vehicle_id])

    def end(self, label: bool = False) -> None:
        """Store the poll's rows and gather its windows; with ``label``, also label every
        window whose truth arrived (else :meth:`label_due` does, later)."""
        if self._batch is not None:
            self._write(label)

    def label_due(self) -> None:
        """Label the windows whose truth arrived once enough wait (:data:`LABEL_BATCH`, or
        the oldest for :data:`LABEL_DELAY_S`). The serving loop calls it after answering a
        poll's frames: labelling (~1 ms in a busy process) never delays an answer."""
        if self._labels and (
            len(self._labels) >= LABEL_BATCH or self._clock() - self._label_since >= LABEL_DELAY_S
        ):
            self._flush_labels()

    def _book(self, b: _Batch, v: _Vehicle) -> int:
        b.window_slot.append(v.slot)
        b.window_end.append(v.n)
        return len(b.window_end) - 1

    def _store(self, label: bool = False) -> _Batch:
        """:meth:`_write` the current batch and start the next one (mid-poll)."""
        b = self._write(label)
        self._batches += 1
        self._batch = _Batch(b.frames, b.xy, self._batches)
        return self._batch

    def _write(self, label: bool = False) -> _Batch:
        """Write and gather what the current batch holds, and with ``label`` label the
        windows whose truth arrived; returns it (no batch is current after)."""
        b = self._batch
        assert b is not None
        self._batch = None  # a failure below must not leave a half-stored batch behind
        if b.frame or b.window_end:
            f = b.frames
            windows = self._rings.store(
                b.at, f.times, f.values, b.frame, b.window_slot, b.window_end, self.spec.history
            )
            if b.window_end:
                b.windows.array = windows
        if label:
            self._flush_labels()
        self._unscored.extend(b.awaiting)
        return b

    def _flush_labels(self) -> None:
        """Ground truth of every window whose longest horizon arrived."""
        labels, self._labels = self._labels, []
        if not labels:
            return
        vehicles, firsts, ends, awaiting = list(zip(*labels, strict=True))
        for v in vehicles:
            v.label_n = -1
        slot = np.array([v.slot for v in vehicles], np.int64)
        first = np.array(firsts, np.int64)
        lengths = np.array(ends, np.int64) - first
        times, xy = self._rings.read(slot, first, int(lengths.max()), slice(0, 2))
        targets, ok = window.labels_on_tracks(
            times, xy[..., 0], xy[..., 1], lengths, [a.t0 for a in awaiting], self.spec.horizons_s
        )
        rows = np.flatnonzero(ok).tolist()
        if not rows:
            return
        preds = np.full((len(rows), *targets.shape[1:]), np.nan, np.float32)
        windows: list[tuple[np.ndarray, int]] = []
        for i, q in enumerate(rows):
            a = awaiting[q]
            assert a.windows.array is not None  # gathered when its poll was stored
            windows.append((a.windows.array, a.row))
            if a.pred is not None and a.pred.shape == preds.shape[1:]:  # answered before its truth
                preds[i] = a.pred
        self._truth.append(
            stack_rows(windows), targets[rows].astype(np.float32), preds, self._clock()
        )

    # --- between polls -----------------------------------------------------------------
    def add_frame(self, frame: SensorFrame, partition: int) -> str:
        """:meth:`add` for one frame outside the serving loop (tests, seeding): a poll of
        its own, its ground truth labelled at once."""
        self.begin(FrameColumns.of([[frame]]))
        try:
            return self.add(0, partition)
        finally:
            self.end(label=True)

    def unusable(self, vehicle_id: str) -> str | None:
        """Why the vehicle's window cannot go to the model ('warmup' or 'gap'), else None."""
        v = self._vehicles.get(vehicle_id)
        if v is None or v.n - v.rows_from < self.spec.history:
            return "warmup"
        return "gap" if v.gap_at > v.n - self.spec.history else None

    def _usable(self, v: _Vehicle) -> bool:
        h = self.spec.history
        return v.n - v.rows_from >= h and v.gap_at <= v.n - h

    def window(self, vehicle_id: str) -> np.ndarray | None:
        """Model input ``[history, 7]`` ending at the newest frame, or None while warming up
        (outside a poll; the serving loop reserves windows instead)."""
        v = self._vehicles.get(vehicle_id)
        if v is None or v.n - v.rows_from < self.spec.history:
            return None
        self.begin(FrameColumns.of([]))
        windows, row = self.reserve(vehicle_id)
        self.end()
        assert windows.array is not None
        return windows.array[row]

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
        rows = self._truth.recent(None if within_s is None else self._clock() - within_s)
        if rows is None:
            empty = np.zeros((0, len(self.spec.horizons_s), 2), np.float32)
            return np.zeros((0, self.spec.history, 7), np.float32), empty, empty
        return rows

    def score_awaiting(self, predict: Callable[[np.ndarray], np.ndarray]) -> int:
        """Predict every window still waiting for its truth (off the serving loop); returns
        how many. Windows of another length than the model's are left unscored."""
        todo: list[_Awaiting] = []
        while self._unscored:
            try:
                todo.append(self._unscored.popleft())
            except IndexError:  # emptied by a concurrent set_spec
                break
        history = self.spec.history
        fits = [
            (a, (w, a.row))
            for a in todo
            if (w := a.windows.array) is not None and w.shape[1] == history
        ]
        if not fits:
            return 0
        out = predict(stack_rows([r for _, r in fits]))
        for (a, _), pred in zip(fits, out, strict=True):
            a.pred = np.asarray(pred, np.float32)
        return len(fits)

    def drop_partitions(self, partitions: set[int]) -> int:
        """Forget vehicles last seen on ``partitions`` (revoked); returns how many."""
        gone = [vid for vid, v in self._vehicles.items() if v.partition in partitions]
        if gone:  # their slots are reused: label what waits now (between polls: all stored)
            self._flush_labels()
        for vid in gone:
            self._rings.give_back(self._vehicles.pop(vid).slot)
        return len(gone)
