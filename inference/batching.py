"""Micro-batching across vehicles: a batch closes when full or when its oldest frame has
waited ``max_wait_ns``. Latency first: a lone frame never waits longer than that, and does
not wait at all while waiting has stopped paying off."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from schemas.sensor import SensorFrame
from schemas.sensor_columns import FrameColumns


class Windows:
    """The model windows one poll reserved, ``array[row]`` of shape ``[history, 7]``; the
    history store fills ``array`` in one gather when the poll's frames are stored."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray | None = None) -> None:
        self.array = array


class Origin(NamedTuple):
    """The record a frame came in, and its stamps: one per record, shared by its frames."""

    topic: str
    partition: int
    offset: int
    t_produce_ns: int
    t_consumed_ns: int
    deadline_ns: int


@dataclass(slots=True, eq=False)
class Pending:
    """One frame waiting for an answer, and the record it came in.

    Its values stay in its poll's columns (``frames``, row ``index``) and its model window
    in its poll's windows (``window``, row ``row``): nothing is copied per frame.
    """

    vehicle_id: str
    seq: int
    t_event_ns: int
    frames: FrameColumns
    index: int
    window: Windows | None
    row: int
    origin: Origin

    @classmethod
    def of(
        cls,
        frame: SensorFrame,
        window: npt.ArrayLike | None,
        topic: str,
        partition: int,
        offset: int,
        t_produce_ns: int,
        t_consumed_ns: int,
        deadline_ns: int,
    ) -> Pending:
        """One frame on its own, outside a poll (tests)."""
        w = None if window is None else Windows(np.asarray(window)[None])
        f = FrameColumns.of([[frame]])
        origin = Origin(topic, partition, offset, t_produce_ns, t_consumed_ns, deadline_ns)
        return cls(frame.vehicle_id, frame.seq, frame.t_event_ns, f, 0, w, 0, origin)


def stack_rows(rows: Sequence[tuple[np.ndarray, int]]) -> np.ndarray:
    """``block[row]`` for each (non-empty) pair, stacked: one fancy index per distinct block
    (a batch holds frames of a few polls). Blocks must agree in every dimension but the
    first."""
    first = rows[0][0]
    if all(block is first for block, _ in rows):  # the common case: one poll's block
        return first[[row for _, row in rows]]
    groups: dict[int, tuple[np.ndarray, list[int], list[int]]] = {}
    for i, (block, row) in enumerate(rows):
        g = groups.get(id(block))
        if g is None:
            g = groups[id(block)] = (block, [], [])
        g[1].append(i)
        g[2].append(row)
    out = np.empty((len(rows), *first.shape[1:]), first.dtype)
    for block, at, picked in groups.values():
        out[at] = block[picked]
    return out


WAITS_KEPT = 16
"""How many of the latest waits decide whether a new batch waits."""
WAITS_THAT_PAY = 2
"""Of those, how many must have brought frames for new batches to keep waiting."""
PROBE_EVERY = 8
"""While waiting does not pay, one new batch in this many still waits, to notice when it
would again."""


class MicroBatcher:
    """FIFO of frames for the model; ``take`` returns at most ``max_batch`` of them.

    A new batch waits up to ``max_wait_ns`` for more frames only while waiting pays: when
    at least :data:`WAITS_THAT_PAY` of the latest :data:`WAITS_KEPT` waits brought frames
    (the caller reports each through :meth:`waited`). At a low rate a frame arrives alone,
    and the wait would cost it latency and the loop a second iteration for nothing.
    """

    def __init__(self, max_batch: int, max_wait_ns: int) -> None:
        if max_batch < 1 or max_wait_ns < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_ns >= 0")
        self.max_batch, self.max_wait_ns = max_batch, max_wait_ns
        self._items: deque[Pending] = deque()
        self._wait_ns = max_wait_ns
        """How long the current batch may wait: max_wait_ns, or 0 while waiting does not pay."""
        self._waits: deque[bool] = deque(maxlen=WAITS_KEPT)
        self._batches = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: Pending) -> None:
        if not self._items:  # a new batch
            self._batches += 1
            self._wait_ns = self.max_wait_ns if self._worth_waiting() else 0
        self._items.append(item)

    def waited(self, brought_frames: bool) -> None:
        """Report one wait for the current batch to fill: did any frame arrive during it?"""
        self._waits.append(brought_frames)

    def _worth_waiting(self) -> bool:
        return (
            len(self._waits) < WAITS_KEPT
            or sum(self._waits) >= WAITS_THAT_PAY
            or self._batches % PROBE_EVERY == 0
        )

    def due(self, now_ns: int) -> bool:
        """A batch should run now: it is full, or its oldest frame waited long enough."""
        if not self._items:
            return False
        if len(self._items) >= self.max_batch:
            return True
        return now_ns - self._items[0].origin.t_consumed_ns >= self._wait_ns

    def wait_ns(self, now_ns: int) -> int | None:
        """Time until the current batch is due (0 if due now), None when empty."""
        if not self._items:
            return None
        if len(self._items) >= self.max_batch:
            return 0
        return max(0, self._items[0].origin.t_consumed_ns + self._wait_ns - now_ns)

    def take(self) -> list[Pending]:
        n = min(self.max_batch, len(self._items))
        return [self._items.popleft() for _ in range(n)]

    def drain(self) -> list[Pending]:
        out = list(self._items)
        self._items.clear()
        return out

    def first_offsets(self) -> dict[tuple[str, int], int]:
        """Oldest waiting offset per (topic, partition): commits must stay below it."""
        out: dict[tuple[str, int], int] = {}
        for it in self._items:
            o = it.origin
            key = (o.topic, o.partition)
            if key not in out or o.offset < out[key]:
                out[key] = o.offset
        return out

    def drop_partitions(self, keys: set[tuple[str, int]]) -> list[Pending]:
        """Remove (and return) waiting frames of revoked partitions."""
        keep: deque[Pending] = deque()
        gone: list[Pending] = []
        for it in self._items:
            (gone if (it.origin.topic, it.origin.partition) in keys else keep).append(it)
        self._items = keep
        return gone
