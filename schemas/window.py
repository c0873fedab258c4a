"""The model window contract: how frames become a model input, and how ground truth is read.

One module for the trainer's windowing, serving's history, the report's scoring and the
importer's evaluation, so a model change can never make training and serving disagree.

- **Row layout** (``schemas.model_spec.FEATURES``): ``dt, x, y, speed, heading, yaw_rate,
  accel`` per frame, oldest first; ``dt`` is frame time minus the newest frame's time in
  seconds (the last row has dt = 0).
- **Gap test**: a window whose consecutive frames are further apart than the spec's
  ``max_gap_s`` never goes to a model (and is never learned from).
- **Labels**: the position at anchor time + horizon is interpolated linearly *in time*
  between the two track points around it, never taken by index; a label that would be
  interpolated across more than ``max_label_gap_s`` (or lies outside the track) is absent.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

NS = 1_000_000_000

#: Widest gap between two track points that ground truth is interpolated across (s).
LABEL_GAP_S = 0.5

Array = npt.NDArray[np.float64]


def window_rows(rows: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Model input ``[T, 7]`` float32 from rows ``(t_ns, x, y, speed, heading, yaw, accel)``.

    Also takes ``[N, T, 7]`` (a batch of windows). Times are subtracted in float64 before
    the cast, so nanosecond epochs keep their sub-millisecond precision.
    """
    arr = np.array(rows, dtype=np.float64)
    arr[..., 0] = (arr[..., 0] - arr[..., -1:, 0]) / NS
    return arr.astype(np.float32)


def gap_ns(max_gap_s: float) -> int:
    return round(max_gap_s * NS)


def has_gap(times_ns: npt.ArrayLike, max_gap_s: float) -> bool:
    """Whether consecutive ``times_ns`` are ever further apart than ``max_gap_s``."""
    t = np.asarray(times_ns, dtype=np.int64)
    return bool(len(t) > 1 and (np.diff(t) > gap_ns(max_gap_s)).any())


def label_times_ns(t_anchor_ns: npt.ArrayLike, horizons_s: Sequence[float]) -> np.ndarray:
    """``[N, K]`` int64 label times: each anchor plus each horizon."""
    h = np.asarray([round(s * NS) for s in horizons_s], dtype=np.int64)
    return np.atleast_1d(np.asarray(t_anchor_ns, dtype=np.int64))[:, None] + h[None, :]


def interpolate(
    track_t_ns: npt.ArrayLike,
    track_x: npt.ArrayLike,
    track_y: npt.ArrayLike,
    at_ns: npt.ArrayLike,
    max_label_gap_s: float = LABEL_GAP_S,
) -> tuple[Array, np.ndarray]:
    """Positions at ``at_ns`` (any shape ``S``) on a time-sorted track: ``(S + (2,), ok)``.

    ``ok`` is False where a time lies outside the track or between two points more than
    ``max_label_gap_s`` apart; those positions are NaN.
    """
    t = np.asarray(track_t_ns, dtype=np.int64)
    at = np.asarray(at_ns, dtype=np.int64)
    shape = at.shape
    out = np.full((*shape, 2), np.nan)
    ok = np.zeros(shape, bool)
    if len(t) < 1:
        return out, ok
    flat = at.reshape(-1)
    hi = np.clip(np.searchsorted(t, flat, "left"), 0, len(t) - 1)
    lo = np.maximum(hi - 1, 0)
    good = _readable(flat, t[0], t[-1], t[lo], t[hi], max_label_gap_s)
    x, y = np.asarray(track_x, np.float64), np.asarray(track_y, np.float64)
    # offsets from the first point keep nanosecond epochs exact in float64
    rel_t, rel_at = (t - t[0]).astype(np.float64), (flat - t[0]).astype(np.float64)
    px, py = np.interp(rel_at, rel_t, x), np.interp(rel_at, rel_t, y)
    out.reshape(-1, 2)[good] = np.stack([px[good], py[good]], -1)
    ok.reshape(-1)[:] = good
    return out, ok


def _readable(
    at: np.ndarray,
    first: np.ndarray,
    last: np.ndarray,
    t_lo: np.ndarray,
    t_hi: np.ndarray,
    max_label_gap_s: float,
) -> np.ndarray:
    """Where a position can be read off a track: ``at`` lies on it (``first..last``) and is
    a point of it or between two points at most ``max_label_gap_s`` apart (``t_hi`` is the
    first point at or after ``at``, clipped to the track; ``t_lo`` the one before it)."""
    inside = (at >= first) & (at <= last)
    return inside & ((t_hi == at) | (t_hi - t_lo <= gap_ns(max_label_gap_s)))


def labels(
    track_t_ns: npt.ArrayLike,
    track_x: npt.ArrayLike,
    track_y: npt.ArrayLike,
    t_anchor_ns: npt.ArrayLike,
    horizons_s: Sequence[float],
    max_label_gap_s: float = LABEL_GAP_S,
) -> tuple[Array, np.ndarray]:
    """Ground truth ``[N, K, 2]`` for anchors ``[N]``, and ``ok [N]`` (every horizon known)."""
    at = label_times_ns(t_anchor_ns, horizons_s)
    pos, ok = interpolate(track_t_ns, track_x, track_y, at, max_label_gap_s)
    return pos, np.asarray(ok.all(axis=1))


def labels_on_tracks(
    track_t_ns: npt.ArrayLike,
    track_x: npt.ArrayLike,
    track_y: npt.ArrayLike,
    lengths: npt.ArrayLike,
    t_anchor_ns: npt.ArrayLike,
    horizons_s: Sequence[float],
    max_label_gap_s: float = LABEL_GAP_S,
) -> tuple[Array, np.ndarray]:
    """:func:`labels` for N anchors at once, each on its own track: row i of the ``[N, C]``
    track arrays holds anchor i's track in its first ``lengths[i]`` columns, time-sorted.

    The same positions, bit for bit: the same search, rule and arithmetic as
    :func:`interpolate` (np.interp's formula on times relative to the track's first point).
    """
    t = np.asarray(track_t_ns, dtype=np.int64)
    n, width = t.shape
    length = np.asarray(lengths, dtype=np.int64)
    at = label_times_ns(t_anchor_ns, horizons_s).reshape(n, len(horizons_s))
    if width == 0:
        return np.full((*at.shape, 2), np.nan), np.zeros(n, bool)
    rows = np.arange(n)[:, None]
    last = np.maximum(length - 1, 0)[:, None]
    # searchsorted 'left' in each row's first length[i] points: the points before ``at``
    on_track = (np.arange(width) < length[:, None])[:, None, :]
    before = ((t[:, None, :] < at[:, :, None]) & on_track).sum(axis=2)
    i_hi = np.minimum(before, last)
    i_lo = np.maximum(i_hi - 1, 0)
    t_lo, t_hi, t0 = t[rows, i_lo], t[rows, i_hi], t[:, :1]
    good = (length > 0)[:, None] & _readable(at, t0, t[rows, last], t_lo, t_hi, max_label_gap_s)
    exact = t_hi == at
    rel_at, rel_lo = (at - t0).astype(np.float64), (t_lo - t0).astype(np.float64)
    span = np.where(t_hi > t_lo, (t_hi - t0).astype(np.float64) - rel_lo, 1.0)  # 1: unused
    out = np.full((*at.shape, 2), np.nan)
    for c, v in enumerate((track_x, track_y)):
        v = np.asarray(v, np.float64)
        v_lo, v_hi = v[rows, i_lo], v[rows, i_hi]
        slope = (v_hi - v_lo) / span
        out[..., c] = np.where(
            good, np.where(exact, v_hi, slope * (rel_at - rel_lo) + v_lo), np.nan
        )
    return out, np.asarray(good.all(axis=1))
