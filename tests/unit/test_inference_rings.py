"""Ring-buffer history against the deque history it replaced, on fuzzed fleets.

The reference below is the per-frame deque implementation serving used before (rows and
track as deques of tuples, one numpy window and one labelling per frame), with one fix:
track times stay exact integers when labelled, as the trainer reads them (the deque version
sent them through float64). The ring store must give the same statuses, the same windows
bit for bit, and the same ground truth in the same order, across ring wrap-around, gaps,
confirmed restarts, lone implausible frames, rebalances and spec changes, whatever the
poll sizes.
"""

from __future__ import annotations

import random
from collections import deque

import numpy as np
import pytest

from inference.history import LABEL_BATCH, LABEL_DELAY_S, TRUTH_BURST, HistoryStore
from inference.rings import Rings
from schemas import plausibility, window
from schemas.model_spec import InputSpec
from schemas.sensor import SensorFrame
from schemas.sensor_columns import FrameColumns

S = window.NS
T0 = 1_700_000_000 * S  # epoch nanoseconds: float rounding shows if anything is off


class DequeHistory:
    """The previous HistoryStore, frame by frame (see the module docstring)."""

    def __init__(self, spec: InputSpec, truth_every: int, clock) -> None:
        self.spec, self.truth_every, self.clock = spec, truth_every, clock
        self.vehicles: dict[str, dict] = {}
        self.truth: deque = deque(maxlen=4096)
        self.unscored: deque = deque(maxlen=4096)

    def track_len(self) -> int:
        s = self.spec
        return int(s.max_horizon_s * s.rate_hz * 3) + s.history + 8

    def set_spec(self, spec: InputSpec) -> None:
        if spec == self.spec:
            return
        self.spec = spec
        for v in self.vehicles.values():
            v["rows"] = deque(v["rows"], maxlen=spec.history)
            v["track"] = deque(v["track"], maxlen=self.track_len())
            v["pending"].clear()
        self.unscored.clear()
        self.truth.clear()

    def add(self, f: SensorFrame, partition: int) -> str:
        v = self.vehicles.get(f.vehicle_id)
        if v is None:
            v = self.vehicles[f.vehicle_id] = {
                "rows": deque(maxlen=self.spec.history),
                "track": deque(maxlen=self.track_len()),
                "clock": plausibility.VehicleClock(plausibility.Limits()),
                "pending": deque(),
                "last": -1,
                "count": 0,
            }
        v["partition"] = partition
        judged = v["clock"].judge(f.seq, f.t_event_ns, f.x, f.y)
        if judged == plausibility.RESTART:
            v["rows"].clear(), v["track"].clear(), v["pending"].clear()
            v["last"] = -1
        elif judged != plausibility.OK:
            return judged
        status = "ok"
        if v["last"] >= 0 and f.t_event_ns - v["last"] > window.gap_ns(self.spec.max_gap_s):
            v["track"].clear(), v["pending"].clear()
            status = "gap"
        v["last"] = f.t_event_ns
        v["rows"].append((f.t_event_ns, f.x, f.y, f.speed, f.heading, f.yaw_rate, f.accel))
        v["track"].append((f.t_event_ns, f.x, f.y))
        v["count"] += 1
        self.label(v)
        full = len(v["rows"]) == self.spec.history
        if full and v["count"] % self.truth_every == 0 and not self.has_gap(v):
            a = {"t0": f.t_event_ns, "window": window.window_rows(v["rows"]), "pred": None}
            v["pending"].append(a)
            self.unscored.append(a)
        return status

    def has_gap(self, v: dict) -> bool:
        return window.has_gap([r[0] for r in v["rows"]], self.spec.max_gap_s)

    def unusable(self, vid: str) -> str | None:
        v = self.vehicles.get(vid)
        if v is None or len(v["rows"]) < self.spec.history:
            return "warmup"
        return "gap" if self.has_gap(v) else None

    def window(self, vid: str) -> np.ndarray | None:
        v = self.vehicles.get(vid)
        if v is None or len(v["rows"]) < self.spec.history:
            return None
        return window.window_rows(v["rows"])

    def label(self, v: dict) -> None:
        horizon = round(self.spec.max_horizon_s * S)
        newest = v["track"][-1][0]
        done = []
        while v["pending"] and v["pending"][0]["t0"] + horizon <= newest:
            done.append(v["pending"].popleft())
        if not done:
            return
        t = np.array([p[0] for p in v["track"]], np.int64)
        xy = np.array([p[1:] for p in v["track"]], np.float64)
        targets, ok = window.labels(
            t, xy[:, 0], xy[:, 1], [a["t0"] for a in done], self.spec.horizons_s
        )
        for a, target, good in zip(done, targets.astype(np.float32), ok, strict=True):
            if good:
                self.truth.append((a["window"], target, self.clock(), a["pred"]))

    def score_awaiting(self, predict) -> None:
        todo = [a for a in self.unscored if a["window"].shape[0] == self.spec.history]
        self.unscored.clear()
        if todo:
            for a, p in zip(todo, predict(np.stack([a["window"] for a in todo])), strict=True):
                a["pred"] = np.asarray(p, np.float32)

    def drop_partitions(self, partitions: set[int]) -> None:
        for vid in [k for k, v in self.vehicles.items() if v["partition"] in partitions]:
            del self.vehicles[vid]


class Fleet:
    """Vehicles at ~10 Hz with jitter, gaps, restarts, forged and duplicate frames."""

    def __init__(self, rng: random.Random, vehicles: int) -> None:
        self.rng = rng
        self.state = {f"v{i}": [i * 1000, T0 + i * 7_777_777, 0.0, 0.0] for i in range(vehicles)}
        self.sent: dict[str, list[SensorFrame]] = {vid: [] for vid in self.state}

    def next(self) -> SensorFrame:
        rng = self.rng
        vid = rng.choice(sorted(self.state))
        s = self.state[vid]
        r = rng.random()
        if r < 0.02 and self.sent[vid]:
            return rng.choice(self.sent[vid][-5:])  # duplicate: out of order
        if r < 0.03:  # a lone forged frame: implausible, then the old clock goes on
            return self._frame(vid, s[0] + 1, s[1] + 10**6 * S, s[2], s[3])
        if r < 0.04:
            return self._frame(vid, s[0] + 1, s[1] + S // 10, s[2] + 1e5, s[3])  # teleport
        dt = S // 10 + rng.randint(-20, 20) * 1_000_000
        if r < 0.07:
            dt += rng.choice([250, 400, 700, 2000]) * 1_000_000  # a gap
        elif r < 0.08:
            dt += 400 * S  # the vehicle restarts after a long silence (confirmed next frame)
        s[0] += 1
        s[1] += dt
        s[2] += 10.0 * dt / S
        s[3] += rng.uniform(-0.1, 0.1)
        f = self._frame(vid, s[0], s[1], s[2], s[3])
        self.sent[vid].append(f)
        return f

    def _frame(self, vid: str, seq: int, t: int, x: float, y: float) -> SensorFrame:
        return SensorFrame(vid, seq, t, x, y, 10.0, 0.1, self.rng.uniform(-0.2, 0.2), 0.0)


def _same_truth(
    store: HistoryStore, ref: DequeHistory, within_s: float | None = None, deferred: bool = False
) -> int:
    """The store's ground truth is the reference's; ``deferred``: its oldest part (labels
    wait for a batch), with a model answer where the reference has one (a window scored
    while its label waited has one too)."""
    windows, targets, preds = store.scored_truth(within_s)
    items = [it for it in ref.truth if within_s is None or it[2] >= ref.clock() - within_s]
    if deferred:
        items = items[: len(windows)]
        assert len(windows) == len(items)
        if items:
            np.testing.assert_array_equal(windows, np.stack([it[0] for it in items]))
            np.testing.assert_array_equal(targets, np.stack([it[1] for it in items]))
            for pred, it in zip(preds, items, strict=True):
                if it[3] is not None:
                    np.testing.assert_array_equal(pred, it[3])
        return len(items)
    assert len(windows) == len(items)
    if items:
        np.testing.assert_array_equal(windows, np.stack([it[0] for it in items]))
        np.testing.assert_array_equal(targets, np.stack([it[1] for it in items]))
        nan = np.full(preds.shape[1:], np.nan, np.float32)
        want = np.stack([nan if it[3] is None else it[3] for it in items])
        np.testing.assert_array_equal(preds, want)
    return len(items)


SPECS = [
    InputSpec(),
    InputSpec(history=6, max_gap_s=0.5),
    InputSpec(history=14, max_gap_s=0.3),
    InputSpec(history=10, horizons_s=(0.5, 1.5)),
]


@pytest.mark.parametrize("deferred", [False, True], ids=["labelled-per-poll", "deferred"])
@pytest.mark.parametrize("seed", range(4))
def test_ring_history_matches_the_deque_history_frame_by_frame(seed: int, deferred: bool) -> None:
    """Poll by poll, the same statuses, windows and ground truth as the deque history;
    ``deferred``: as the serving loop labels (in batches, across polls of up to 300 frames,
    so labels wait while rings wrap), the same truth, later."""
    rng = random.Random(seed)
    now = [1000.0]
    clock = lambda: now[0]  # noqa: E731
    spec = SPECS[seed % 2]
    store = HistoryStore(spec, truth_capacity=4096, truth_every=2, clock=clock)
    ref = DequeHistory(spec, truth_every=2, clock=clock)
    fleet = Fleet(rng, vehicles=[3, 8, 1, 5][seed])
    partition_of = {vid: i % 3 for i, vid in enumerate(sorted(fleet.state))}
    checked = labelled = 0
    k = len(spec.horizons_s)

    def predict(w):
        return np.repeat(w[:, -1:, 1:3], k, axis=1)

    for poll in range(220):
        frames = [fleet.next() for _ in range(rng.choice([1, 1, 2, 5, 17, 40, 90, 300]))]
        store.begin(FrameColumns.of([[f] for f in frames]))
        booked = []
        for i, f in enumerate(frames):
            part = partition_of[f.vehicle_id]
            status = store.add(i, part)
            assert status == ref.add(f, part), (poll, i, f)
            if status.startswith("implausible"):
                continue
            assert store.unusable(f.vehicle_id) == ref.unusable(f.vehicle_id)
            want = ref.window(f.vehicle_id)
            if want is not None:  # over a gap too: the window is the same, only unusable
                booked.append((store.reserve(f.vehicle_id), want))
        store.end(label=not deferred)
        store.label_due()  # as the serving loop does once the poll's frames are answered
        pending = len(store._labels)
        assert pending < LABEL_BATCH if deferred else pending == 0
        for (windows, row), want in booked:
            np.testing.assert_array_equal(windows.array[row], want)
            checked += 1
        now[0] += 0.05
        if rng.random() < 0.3:
            assert store.score_awaiting(predict) >= 0
            ref.score_awaiting(predict)
        if rng.random() < 0.02:  # a rebalance takes one partition away
            gone = {rng.randrange(3)}
            store.drop_partitions(gone)
            ref.drop_partitions(gone)
        if seed >= 2 and rng.random() < 0.03:  # a swap to a model of another spec
            spec = k_spec = rng.choice(SPECS)
            store.set_spec(k_spec)
            ref.set_spec(k_spec)
            k = len(spec.horizons_s)
        labelled = max(labelled, _same_truth(store, ref, deferred=deferred))
        if not deferred:
            _same_truth(store, ref, within_s=2.0)
    assert checked > 500 and labelled > 50, (checked, labelled)
    if deferred:  # everything waiting is labelled by the next store of a quarter second on
        now[0] += LABEL_DELAY_S
        store.begin(FrameColumns.of([]))
        store.end()
        store.label_due()
        assert not store._labels
        assert _same_truth(store, ref, deferred=True) == len(ref.truth)
    assert max(len(v) for v in fleet.sent.values()) > 2 * store._rings.capacity  # wrapped


def test_a_vehicle_with_more_frames_in_one_poll_than_its_ring_holds() -> None:
    """A backlog of one vehicle in one poll: windows still read the rows of their frame."""
    spec = InputSpec()
    store = HistoryStore(spec, truth_capacity=4096, truth_every=1)
    ref = DequeHistory(spec, truth_every=1, clock=store._clock)
    frames = [
        SensorFrame("a", k, T0 + k * S // 10, 1.0 * k, 0.0, 10.0, 0.0, 0.0, 0.0) for k in range(700)
    ]
    store.begin(FrameColumns.of([frames]))
    booked = []
    for i, f in enumerate(frames):
        assert store.add(i, 0) == ref.add(f, 0)
        if store.unusable("a") is None:
            booked.append((store.reserve("a"), ref.window("a")))
    store.end(label=True)
    assert len(booked) == 700 - spec.history + 1
    for (windows, row), want in booked:
        np.testing.assert_array_equal(windows.array[row], want)
    got, targets = store.truth()
    assert len(got) == len(ref.truth) > 600
    np.testing.assert_array_equal(got, np.stack([it[0] for it in ref.truth]))
    np.testing.assert_array_equal(targets, np.stack([it[1] for it in ref.truth]))


def test_labels_waiting_for_their_batch_survive_a_rebalance_that_reuses_the_slot() -> None:
    """A revoked vehicle's windows whose truth arrived are labelled before its ring slot
    goes to another vehicle, whose rows would overwrite the track they read."""
    spec = InputSpec()
    store = HistoryStore(spec, truth_every=1, clock=lambda: 0.0)  # time never forces a label
    ref = DequeHistory(spec, truth_every=1, clock=lambda: 0.0)

    def poll(frames: list[SensorFrame], partition: int) -> None:
        store.begin(FrameColumns.of([[f] for f in frames]))
        for i, f in enumerate(frames):
            assert store.add(i, partition) == ref.add(f, partition)
        store.end()
        store.label_due()

    def drive(vid: str, seqs: range, x0: float) -> list[SensorFrame]:
        return [
            SensorFrame(vid, s, T0 + s * S // 10, x0 + s, 0.0, 10.0, 0.0, 0.0, 0.0) for s in seqs
        ]

    first = spec.history + round(spec.max_horizon_s * spec.rate_hz)
    for f in drive("a", range(first + 5), 0.0):  # a few windows' truth arrives, one per poll
        poll([f], 0)
    assert 0 < len(store._labels) < LABEL_BATCH and len(store.truth()[0]) == 0
    store.drop_partitions({0})
    ref.drop_partitions({0})
    for f in drive("b", range(2 * store._rings.capacity), 5e5):  # takes a's slot, wraps it
        poll([f], 1)
    store.begin(FrameColumns.of([]))
    store.end(label=True)
    assert _same_truth(store, ref, deferred=True) == len(ref.truth) > 5


def test_a_poll_ends_without_labelling_and_label_due_labels_what_is_due() -> None:
    """The serving loop answers a poll's frames before labelling: end() stores and gathers
    only; label_due() labels once LABEL_BATCH windows wait or the oldest waited
    LABEL_DELAY_S, whatever end() was called in between."""
    spec = InputSpec()
    now = [0.0]
    store = HistoryStore(spec, truth_every=1, clock=lambda: now[0])
    first = spec.history + round(spec.max_horizon_s * spec.rate_hz)
    for s in range(first + 3):  # the truth of a few windows arrives, one frame per poll
        store.begin(FrameColumns.of([[SensorFrame("a", s, T0 + s * S // 10, s, 0, 10, 0, 0, 0)]]))
        store.add(0, 0)
        store.end()
    waiting = len(store._labels)
    assert 0 < waiting < LABEL_BATCH
    now[0] += 10 * LABEL_DELAY_S
    store.begin(FrameColumns.of([]))
    store.end()
    assert len(store._labels) == waiting and len(store.truth()[0]) == 0  # end(): no labels
    store.label_due()
    assert not store._labels and len(store.truth()[0]) == waiting


def test_a_fleet_is_labelled_between_polls_only_while_no_ring_is_at_risk() -> None:
    """A fleet sending a frame per vehicle per poll: every waiting window's track stays in
    its vehicle's ring for many polls, so no poll labels before its frames are answered
    (a labelling costs ~0.5 ms): only label_due() does, after the poll."""
    spec = InputSpec()
    store = HistoryStore(spec, truth_capacity=100_000, truth_every=10, clock=lambda: 0.0)
    fleet = [f"v{k:03d}" for k in range(100)]
    first = spec.history + round(spec.max_horizon_s * spec.rate_hz)
    for s in range(first + 30):
        frames = [
            SensorFrame(vid, s, T0 + s * S // 10, 1e3 * k + s, 0.0, 10.0, 0.0, 0.0, 0.0)
            for k, vid in enumerate(fleet)
            if s >= k % 10  # joining one poll apart: a tenth of the fleet books each poll
        ]
        labelled = len(store.truth()[0])
        store.begin(FrameColumns.of([[f] for f in frames]))
        for i in range(len(frames)):
            assert store.add(i, 0) == "ok"
        store.end()
        assert len(store.truth()[0]) == labelled, s  # nothing labelled inside the poll
        store.label_due()
    assert len(store.truth()[0]) > 200


def test_truth_per_s_caps_the_windows_kept_as_ground_truth() -> None:
    """A busy fleet books no more truth windows a second than ``truth_per_s`` (after a
    burst of TRUTH_BURST), spread over its vehicles; without the cap, every other window."""
    now = [0.0]

    def fleet(store: HistoryStore, seconds: int) -> None:
        for step in range(seconds * 10):  # 50 vehicles at 10 Hz, one poll per step
            frames = [
                SensorFrame(f"v{v}", step, T0 + step * S // 10, step + v * 1e3, 0.0, 10.0, 0, 0, 0)
                for v in range(50)
            ]
            store.begin(FrameColumns.of([[f] for f in frames]))
            for i in range(len(frames)):
                store.add(i, 0)
            store.end()
            store.label_due()
            now[0] += 0.1

    capped = HistoryStore(InputSpec(), truth_capacity=10_000, truth_every=2, clock=lambda: now[0])
    capped.truth_per_s = 20.0
    fleet(capped, 20)
    windows, _ = capped.truth()
    booked = len(windows) + sum(len(v.pending) for v in capped._vehicles.values())
    assert booked <= TRUTH_BURST + 20 * 20 + 1
    assert booked >= 20 * (20 - 2)  # the tokens are used, not lost
    assert len({round(float(w[-1, 1]) // 1e3) for w in windows}) > 25  # many vehicles

    now[0] = 0.0
    free = HistoryStore(InputSpec(), truth_capacity=10_000, truth_every=2, clock=lambda: now[0])
    fleet(free, 20)
    assert len(free.truth()[0]) > 10 * len(windows)


@pytest.mark.parametrize("seed", range(5))
def test_store_writes_the_rows_then_gathers_window_rows_of_what_it_read(seed: int) -> None:
    """The compiled write-and-gather against numpy: the same ring contents, and windows
    bit for bit those of :func:`window.window_rows` over the rows as read back."""
    rng = np.random.default_rng(seed)
    rings = Rings(capacity=16, slots=4)
    slots = [rings.take() for _ in range(4)]
    ends = dict.fromkeys(slots, 0)
    for _ in range(30):
        n = int(rng.integers(1, 12))
        times = T0 + rng.integers(0, 10**12, n)  # epoch ns: float64 rounding is exercised
        values = rng.normal(0, 1e4, (n, 16))[:, ::2]  # strided, as a column slice would be
        frame = rng.permutation(n).tolist()
        owner = rng.choice(slots, n).tolist()
        at = []
        for s in owner:
            at.append(rings.at(s, ends[s]))
            ends[s] += 1
        want_t, want_v = rings.times.copy(), rings.values.copy()
        want_t.reshape(-1)[at] = times[frame]
        want_v.reshape(-1, 6)[at] = values[frame, :6]
        booked = [s for s in slots if ends[s] >= 5]
        got = rings.store(at, times, values, frame, booked, [ends[s] for s in booked], 5)
        np.testing.assert_array_equal(rings.times, want_t)
        np.testing.assert_array_equal(rings.values, want_v)
        first = np.array([ends[s] - 5 for s in booked], np.int64)
        t, v = rings.read(np.array(booked, np.int64), first, 5)
        rows = np.concatenate([t[..., None].astype(np.float64), v], axis=-1)
        assert got.dtype == np.float32 and got.shape == (len(booked), 5, 7)
        np.testing.assert_array_equal(got, window.window_rows(rows).reshape(got.shape))
