"""Bounded replay buffer: fresh (never trained) samples first, then uniform replay."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from schemas.model_spec import InputSpec
from trainer.windowing import Sample


@dataclass(frozen=True)
class Batch:
    windows: np.ndarray
    targets: np.ndarray
    fresh: int
    """How many samples are seen for the first time (counted as trained samples)."""
    label_ns: int
    """Newest label time among the fresh samples (0 if none)."""
    label_produce_ns: int

    def __len__(self) -> int:
        return len(self.windows)


class ReplayBuffer:
    """Ring of preallocated arrays; the oldest samples are overwritten when full."""

    def __init__(self, spec: InputSpec, capacity: int, seed: int = 0) -> None:
        self.capacity = capacity
        self._windows = np.zeros((capacity, spec.history, len(spec.features)), np.float32)
        self._targets = np.zeros((capacity, len(spec.horizons_s), 2), np.float32)
        self._label = np.zeros(capacity, np.int64)
        self._produce = np.zeros(capacity, np.int64)
        self._next = 0
        self._size = 0
        self._fresh: deque[int] = deque(maxlen=capacity)
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self._size

    @property
    def fresh(self) -> int:
        return len(self._fresh)

    def add(self, samples: list[Sample]) -> None:
        for s in samples:
            i = self._next
            self._windows[i] = s.window
            self._targets[i] = s.target
            self._label[i] = s.t_label_ns
            self._produce[i] = s.t_label_produce_ns
            self._fresh.append(i)
            self._next = (i + 1) % self.capacity
            self._size = min(self._size + 1, self.capacity)

    def sample(self, n: int, fresh_fraction: float) -> Batch:
        """Up to ``n`` samples: the newest untrained ones first, the rest drawn uniformly."""
        k = min(len(self._fresh), max(1, round(n * fresh_fraction)) if fresh_fraction else 0)
        fresh = [self._fresh.pop() for _ in range(k)]  # newest first
        m = min(n - k, self._size)
        drawn = list(self._rng.integers(0, self._size, m)) if m > 0 else []
        idx = np.asarray(fresh + drawn, dtype=np.int64)
        fresh_idx = np.asarray(fresh, dtype=np.int64)
        return Batch(
            windows=self._windows[idx],
            targets=self._targets[idx],
            fresh=k,
            label_ns=int(self._label[fresh_idx].max()) if k else 0,
            label_produce_ns=int(self._produce[fresh_idx].max()) if k else 0,
        )
