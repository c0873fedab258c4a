"""Per-vehicle ring buffers of history rows, written and read once per poll.

Each vehicle owns a slot of preallocated arrays: event times (int64, exact) and the six
state values ``x, y, speed, heading, yaw_rate, accel`` (float64). Its rows get increasing
logical indices; row ``m`` lives at ``m % capacity``. A poll's rows are written in one
indexing operation and windows or tracks of any vehicles read in another; the caller keeps
every row it still reads within the newest ``capacity`` of its vehicle.

The serving loop's write-then-gather is one compiled call (:meth:`Rings.store`): on a poll
of one frame, numpy's fixed cost per operation was most of it.
"""

from __future__ import annotations

import numba
import numpy as np

from schemas.window import NS

STATE = 6
"""Values per row besides its time: x, y, speed, heading, yaw_rate, accel."""


class Rings:
    """Ring buffers for every vehicle slot; grows by doubling, slots are reused."""

    def __init__(self, capacity: int, slots: int = 64) -> None:
        self.capacity = capacity
        self.times = np.zeros((slots, capacity), np.int64)
        self.values = np.zeros((slots, capacity, STATE), np.float64)
        self._free = list(range(slots - 1, -1, -1))

    def take(self) -> int:
        """A free slot (never one another vehicle still holds)."""
        if not self._free:
            n = len(self.times)
            self.times = np.concatenate([self.times, np.zeros_like(self.times)])
            self.values = np.concatenate([self.values, np.zeros_like(self.values)])
            self._free = list(range(2 * n - 1, n - 1, -1))
        return self._free.pop()

    def give_back(self, slot: int) -> None:
        self._free.append(slot)

    def at(self, slot: int, row: int) -> int:
        """Where row ``row`` of slot ``slot`` lives in the flattened rings."""
        return slot * self.capacity + row % self.capacity

    def store(
        self,
        at: list[int],
        times: np.ndarray,
        values: np.ndarray,
        frame: list[int],
        slot: list[int],
        end: list[int],
        width: int,
    ) -> np.ndarray:
        """Write, then gather model windows. Place ``at[k]`` (see :meth:`at`) gets
        ``times[frame[k]]`` and the first :data:`STATE` ``values[frame[k]]`` (no place twice:
        fewer than ``capacity`` rows per slot). Window ``q`` holds rows ``end[q] - width ..
        end[q] - 1`` of slot ``slot[q]``. The windows are float32 ``[Q, width, 1 + STATE]``,
        exactly :func:`schemas.window.window_rows` of those rows."""
        out = np.empty((len(end), width, 1 + STATE), np.float32)
        rows = np.array((at, frame), np.int64)
        windows = np.array((slot, end), np.int64)
        _store(self.times, self.values, rows, times, values, windows, out)
        return out

    def read(
        self, slot: np.ndarray, first: np.ndarray, width: int, columns: slice = slice(None)
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``first[q] .. first[q] + width - 1`` of slot ``slot[q]``: times
        ``[Q, width]`` and the state ``columns`` ``[Q, width, C]``."""
        at = slot[:, None] * self.capacity + (first[:, None] + np.arange(width)) % self.capacity
        return self.times.reshape(-1)[at], self.values.reshape(-1, STATE)[:, columns][at]

    def resize(self, capacity: int, keep: list[tuple[int, int, int]]) -> None:
        """Change the capacity, keeping for each ``(slot, end, count)`` the logical rows
        ``end - count .. end - 1`` (``count`` at most both capacities)."""
        old_c, old_t, old_v = self.capacity, self.times, self.values
        self.capacity = capacity
        self.times = np.zeros((len(old_t), capacity), np.int64)
        self.values = np.zeros((len(old_t), capacity, STATE), np.float64)
        kept = [k for k in keep if k[2] > 0]
        if not kept:
            return
        slot, end, count = (np.array(c, np.int64)[:, None] for c in zip(*kept, strict=True))
        width = np.arange(int(count.max()))
        valid = width < count
        m = (end - count + width)[valid]
        s = np.broadcast_to(slot, valid.shape)[valid]
        old_at, new_at = s * old_c + m % old_c, s * capacity + m % capacity
        self.times.reshape(-1)[new_at] = old_t.reshape(-1)[old_at]
        self.values.reshape(-1, STATE)[new_at] = old_v.reshape(-1, STATE)[old_at]


@numba.njit(
    "void(int64[:, ::1], float64[:, :, ::1], int64[:, ::1], int64[:], float64[:, :],"
    " int64[:, ::1], float32[:, :, ::1])",
    cache=True,
    nogil=True,
)
def _store(rt, rv, rows, times, values, windows, out):
    """:meth:`Rings.store`'s loops over ``rows`` (at, frame) and ``windows`` (slot, end);
    the window arithmetic is window_rows' (times to float64 first, then minus the newest,
    over NS, each value rounded once to float32)."""
    cap = rt.shape[1]
    flat_t = rt.reshape(-1)
    flat_v = rv.reshape(-1, STATE)
    at, frame = rows[0], rows[1]
    for k in range(rows.shape[1]):
        flat_t[at[k]] = times[frame[k]]
        for c in range(STATE):
            flat_v[at[k], c] = values[frame[k], c]
    slot, end = windows[0], windows[1]
    width = out.shape[1]
    for q in range(windows.shape[1]):
        base = slot[q] * cap
        newest = np.float64(flat_t[base + (end[q] - 1) % cap])
        for j in range(width):
            p = base + (end[q] - width + j) % cap
            out[q, j, 0] = (np.float64(flat_t[p]) - newest) / NS
            for c in range(STATE):
                out[q, j, 1 + c] = flat_v[p, c]


# A kernel's first call types its arguments in Python (importing numpy.ma): ~1-35 ms, paid
# here at import rather than by the first frame served.
Rings(1, 1).store([0], np.zeros(1, np.int64), np.zeros((1, 8)), [0], [0], [1], 1)
