"""Recent ground truth in preallocated arrays.

The serving loop appends each batch of labelled windows in one write; the model watcher's
thread (the never-worse gate once a second, swap validation per candidate) reads what was
labelled recently in one gather. Neither walks the windows one by one in Python, so
reading thousands of them holds the GIL for a fraction of a millisecond, not for the tens
of milliseconds the serving loop would then wait for it.
"""

from __future__ import annotations

import threading

import numpy as np

Rows = tuple[np.ndarray, np.ndarray, np.ndarray]
"""Windows ``[N, T, 7]``, future positions ``[N, K, 2]`` and what the model answered for each
window before its truth existed ``[N, K, 2]`` (NaN where nothing did), oldest first."""


class TruthRing:
    """The newest ``capacity`` labelled windows; thread-safe.

    Its arrays are sized by the first append; :meth:`clear` (a new model spec) forgets them,
    and every later append must keep the shapes of the first.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("truth capacity must be >= 1")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._rows: Rows | None = None
        self._when = np.zeros(capacity, np.float64)
        self._head = 0
        """Where the next row goes."""
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def clear(self) -> None:
        with self._lock:
            self._rows, self._head, self._count = None, 0, 0

    def append(
        self, windows: np.ndarray, targets: np.ndarray, preds: np.ndarray, when: float
    ) -> None:
        """Store row i of each array, labelled at ``when``; past capacity the oldest go.

        Raises ValueError if the arrays disagree in length, or in shape with what is stored.
        """
        n = len(windows)
        if not n == len(targets) == len(preds):
            raise ValueError(f"{n} windows, {len(targets)} targets and {len(preds)} predictions")
        if targets.shape[1:] != preds.shape[1:]:
            raise ValueError(f"targets {targets.shape[1:]} but predictions {preds.shape[1:]}")
        if n == 0:
            return
        keep = min(n, self.capacity)
        with self._lock:
            if self._rows is None:
                w, t, p = (
                    np.zeros((self.capacity, *a.shape[1:]), np.float32)
                    for a in (windows, targets, preds)
                )
                self._rows = (w, t, p)
            stored = self._rows[0].shape[1:], self._rows[1].shape[1:]
            if (windows.shape[1:], targets.shape[1:]) != stored:
                raise ValueError(
                    f"windows {windows.shape[1:]} and targets {targets.shape[1:]} differ from "
                    f"the stored {stored[0]} and {stored[1]}"
                )
            at = (self._head + np.arange(keep)) % self.capacity
            for dst, src in zip(self._rows, (windows, targets, preds), strict=True):
                dst[at] = src[n - keep :]
            self._when[at] = when
            self._head = (self._head + keep) % self.capacity
            self._count = min(self._count + keep, self.capacity)

    def recent(self, since: float | None = None) -> Rows | None:
        """Copies of the rows labelled at or after ``since`` (all if None), oldest first;
        None before anything was stored."""
        with self._lock:
            if self._rows is None:
                return None
            order = (self._head - self._count + np.arange(self._count)) % self.capacity
            if since is not None:
                order = order[self._when[order] >= since]
            windows, targets, preds = (a[order] for a in self._rows)
        return windows, targets, preds
