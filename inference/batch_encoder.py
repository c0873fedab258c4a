"""The binary prediction layout for a whole batch at once (what serve publishes).

:class:`BatchPredictionEncoder` writes the same bytes as
:meth:`schemas.prediction.PredictionEncoder.encode` record by record: everything after the
vehicle id is a fixed-size record per (model name, source, reason), made from a template
per batch in one compiled pass (:func:`_fill_records`). It lives here, not in ``schemas``,
so that reading or writing single predictions needs no compiler.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np

from schemas.errors import CodecError
from schemas.prediction import HEAD, PredictionEncoder


class BatchPredictionEncoder(PredictionEncoder):
    """:class:`PredictionEncoder` with :meth:`encode_many` in one pass per batch."""

    def __init__(self) -> None:
        super().__init__()
        self._templates: dict[tuple[bytes, int, tuple[float, ...]], np.ndarray] = {}

    def encode_many(
        self,
        vehicle_ids: Sequence[str],
        ids: np.ndarray,
        model_version: int,
        middles: Sequence[bytes],
        stamps: np.ndarray,
        horizons: Sequence[float],
        points: np.ndarray,
    ) -> list[bytes]:
        """The batch in one pass: everything after the vehicle id is a fixed-size record
        per middle, written column by column and cut from one buffer."""
        n, k = len(vehicle_ids), len(horizons)
        self.points(k)  # 1..255 horizons
        if points.shape != (n, k, 2):
            raise CodecError("horizons_s", "horizons, pred_x and pred_y differ in length")
        vids = [self.vehicle(v) for v in vehicle_ids]
        if n and middles.count(middles[0]) == n:  # one model or one fallback: one record
            buf, size = self._records(middles[0], ids, model_version, stamps, horizons, points)
            return [vid + buf[i * size : (i + 1) * size] for i, vid in enumerate(vids)]
        out = [b""] * n
        for middle, where in _positions(middles).items():
            idx = np.array(where)
            buf, size = self._records(
                middle, ids[idx], model_version, stamps[idx], horizons, points[idx]
            )
            for j, i in enumerate(where):
                out[i] = vids[i] + buf[j * size : (j + 1) * size]
        return out

    def _records(
        self,
        middle: bytes,
        ids: np.ndarray,
        model_version: int,
        stamps: np.ndarray,
        horizons: Sequence[float],
        points: np.ndarray,
    ) -> tuple[bytes, int]:
        """The fixed-size part of each value (after the vehicle id), as one buffer: the
        batch's template written once per row, then its numbers, in one compiled pass."""
        template = self._template(middle, model_version, tuple(horizons))
        out = np.empty((len(ids), len(template)), np.uint8)
        _fill_records(template, ids, stamps, points, HEAD.size + len(middle), out)
        return out.tobytes(), len(template)

    def _template(
        self, middle: bytes, model_version: int, horizons: tuple[float, ...]
    ) -> np.ndarray:
        """The bytes of a record with what a batch shares filled in: version, middle, the
        horizons (:func:`_fill_records` writes the rest)."""
        key = (middle, model_version, horizons)
        t = self._templates.get(key)
        if t is None:
            if len(self._templates) > 256:  # versions come and go
                self._templates.clear()
            zeros = [0.0] * len(horizons)
            value = self.encode("", 0, 0, model_version, middle, (0,) * 5, horizons, zeros, zeros)
            record = value[len(self.vehicle("")) :]  # the layout as encode() writes it
            t = self._templates[key] = np.frombuffer(record, np.uint8).copy()
        return t


_FILL_SIGNATURES = [
    numba.void(
        numba.uint8[::1],  # template
        numba.int64[:, :],  # ids
        numba.int64[:, :],  # stamps
        points[:, :, :],  # float32 from the model, float64 from the physics fallback
        numba.int64,  # stamps_at
        numba.uint8[:, ::1],  # out
    )
    for points in (numba.float32, numba.float64)
]


@numba.njit(_FILL_SIGNATURES, cache=True, nogil=True)
def _fill_records(template, ids, stamps, points, stamps_at, out):
    """Row ``i`` of ``out``: ``template`` with ``ids[i]`` (seq, t_event_ns) at its start,
    ``stamps[i]`` at ``stamps_at`` and ``points[i]`` (x, y; as float64) after each
    horizon of the K triples that follow the K byte. Little-endian, like struct's ``<``."""
    i64 = np.empty(1, np.int64)
    f64 = np.empty(1, np.float64)
    i64_bytes, f64_bytes = i64.view(np.uint8), f64.view(np.uint8)
    points_at = stamps_at + 8 * stamps.shape[1] + 1
    for i in range(out.shape[0]):
        row = out[i]
        row[:] = template
        for c in range(ids.shape[1]):
            i64[0] = ids[i, c]
            row[8 * c : 8 * c + 8] = i64_bytes
        for c in range(stamps.shape[1]):
            i64[0] = stamps[i, c]
            row[stamps_at + 8 * c : stamps_at + 8 * c + 8] = i64_bytes
        for j in range(points.shape[1]):
            for c in range(2):
                f64[0] = points[i, j, c]
                at = points_at + 24 * j + 8 + 8 * c
                row[at : at + 8] = f64_bytes


def _positions(parts: Sequence[bytes]) -> dict[bytes, list[int]]:
    """Where each distinct part occurs."""
    out: dict[bytes, list[int]] = {}
    for i, part in enumerate(parts):
        out.setdefault(part, []).append(i)
    return out
