"""Micro-batching across vehicles: a batch closes when full or when its oldest frame has
waited ``max_wait_ns``. Latency first: a lone frame never waits longer than that."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from schemas.sensor import SensorFrame


@dataclass(slots=True)
class Pending:
    """One frame waiting for the model, with where it came from and its stamps."""

    frame: SensorFrame
    window: np.ndarray | None
    topic: str
    partition: int
    offset: int
    t_produce_ns: int
    t_consumed_ns: int
    deadline_ns: int


class MicroBatcher:
    """FIFO of frames for the model; ``take`` returns at most ``max_batch`` of them."""

    def __init__(self, max_batch: int, max_wait_ns: int) -> None:
        if max_batch < 1 or max_wait_ns < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_ns >= 0")
        self.max_batch, self.max_wait_ns = max_batch, max_wait_ns
        self._items: deque[Pending] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: Pending) -> None:
        self._items.append(item)

    def due(self, now_ns: int) -> bool:
        """A batch should run now: it is full, or its oldest frame waited long enough."""
        if not self._items:
            return False
        if len(self._items) >= self.max_batch:
            return True
        return now_ns - self._items[0].t_consumed_ns >= self.max_wait_ns

    def wait_ns(self, now_ns: int) -> int | None:
        """Time until the current batch is due (0 if due now), None when empty."""
        if not self._items:
            return None
        if len(self._items) >= self.max_batch:
            return 0
        return max(0, self._items[0].t_consumed_ns + self.max_wait_ns - now_ns)

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
            key = (it.topic, it.partition)
            if key not in out or it.offset < out[key]:
                out[key] = it.offset
        return out

    def drop_partitions(self, keys: set[tuple[str, int]]) -> list[Pending]:
        """Remove (and return) waiting frames of revoked partitions."""
        keep: deque[Pending] = deque()
        gone: list[Pending] = []
        for it in self._items:
            (gone if (it.topic, it.partition) in keys else keep).append(it)
        self._items = keep
        return gone
