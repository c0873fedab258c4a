"""Bounded replay buffer with a reuse bound: fresh samples first, then uniform replay.

Every stored sample may be drawn at most ``max_reuse`` times over its life. Draws are
paced by a budget that grows by ``max_reuse`` per new sample and that each batch spends,
so a slow stream (one vehicle: 10 samples/s against 20 steps/s x 64) gets small or empty
batches instead of the same few samples a hundred times a second, and a sample's draws are
spread over the time it waits in the buffer rather than spent in a burst.
"""

from __future__ import annotations

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

    def __init__(self, spec: InputSpec, capacity: int, max_reuse: int, seed: int = 0) -> None:
        if max_reuse < 1:
            raise ValueError(f"max_reuse must be >= 1, got {max_reuse}")
        self.capacity = capacity
        self.max_reuse = max_reuse
        self._windows = np.zeros((capacity, spec.history, len(spec.features)), np.float32)
        self._targets = np.zeros((capacity, len(spec.horizons_s), 2), np.float32)
        self._label = np.zeros(capacity, np.int64)
        self._produce = np.zeros(capacity, np.int64)
        self._uses = np.zeros(capacity, np.int64)
        self._order = np.zeros(capacity, np.int64)
        """Insertion counter per slot (newest first among the fresh)."""
        self._added = 0
        self._next = 0
        self._size = 0
        self.budget = 0
        """Draws left to spend (max_reuse per sample added, minus the draws made)."""
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self._size

    @property
    def fresh(self) -> int:
        return int((self._uses[: self._size] == 0).sum())

    def uses(self) -> np.ndarray:
        """Draws so far of every stored sample (a copy, in slot order)."""
        return self._uses[: self._size].copy()

    def add(self, samples: list[Sample]) -> None:
        for s in samples:
            i = self._next
            self._windows[i] = s.window
            self._targets[i] = s.target
            self._label[i] = s.t_label_ns
            self._produce[i] = s.t_label_produce_ns
            self._uses[i] = 0
            self._order[i] = self._added
            self._added += 1
            self._next = (i + 1) % self.capacity
            self._size = min(self._size + 1, self.capacity)
        self.budget = min(
            self.budget + self.max_reuse * len(samples), self.max_reuse * self.capacity
        )

    def sample(self, n: int, fresh_fraction: float) -> Batch:
        """Up to ``n`` distinct samples within the budget: the newest untrained first, the
        rest uniformly among those not yet drawn ``max_reuse`` times."""
        uses = self._uses[: self._size]
        n = min(n, self.budget)
        fresh_all = np.flatnonzero(uses == 0)
        k = min(len(fresh_all), n, max(1, round(n * fresh_fraction)) if fresh_fraction else 0)
        if k:
            newest = np.argsort(-self._order[fresh_all], kind="stable")[:k]
            fresh = fresh_all[newest]
        else:
            fresh = np.zeros(0, np.int64)
        eligible = np.flatnonzero(uses < self.max_reuse)
        eligible = eligible[~np.isin(eligible, fresh)]
        m = min(n - k, len(eligible))
        drawn = self._rng.choice(eligible, m, replace=False) if m > 0 else np.zeros(0, np.int64)
        idx = np.concatenate([fresh, drawn]).astype(np.int64)
        k_fresh = k + int((self._uses[drawn] == 0).sum())
        fresh_idx = idx[self._uses[idx] == 0]
        self._uses[idx] += 1
        self.budget -= len(idx)
        return Batch(
            windows=self._windows[idx],
            targets=self._targets[idx],
            fresh=k_fresh,
            label_ns=int(self._label[fresh_idx].max()) if len(fresh_idx) else 0,
            label_produce_ns=int(self._produce[fresh_idx].max()) if len(fresh_idx) else 0,
        )
