"""A poll's sensor records decoded at once, column by column (the serving hot path).

:func:`decode_columns` gives the same frames and the same errors as
:func:`schemas.sensor.decode_frames` record by record, and :func:`check_frame_headers_many`
the same stamps and errors as :func:`schemas.sensor.check_frame_headers`, in a few
vectorised passes per poll instead of a few Python objects per frame.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np

from schemas import headers
from schemas.binary import from_opt_float, opt_float
from schemas.errors import ValidationError
from schemas.headers import Headers
from schemas.sensor import (
    _BODY,
    _COUNT,
    MAX_ABS_ACCEL,
    MAX_ABS_POSITION_M,
    MAX_ABS_YAW_RATE,
    MAX_SPEED_MS,
    MAX_VEHICLE_ID_BYTES,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    SensorFrame,
    check_frame_headers,
    decode_frames,
)

VALUE_COLUMNS = ("x", "y", "speed", "heading", "yaw_rate", "accel", "lat", "lon")
"""Columns of :attr:`FrameColumns.values`, in the value layout's order."""
_LOW, _HIGH = np.array(
    [
        (-MAX_ABS_POSITION_M, MAX_ABS_POSITION_M),  # x
        (-MAX_ABS_POSITION_M, MAX_ABS_POSITION_M),  # y
        (0.0, MAX_SPEED_MS),  # speed
        (-(math.pi + 1e-6), math.pi + 1e-6),  # heading
        (-MAX_ABS_YAW_RATE, MAX_ABS_YAW_RATE),  # yaw_rate
        (-MAX_ABS_ACCEL, MAX_ABS_ACCEL),  # accel
        (-90.0, 90.0),  # lat, when present
        (-180.0, 180.0),  # lon, when present
    ]
).T.copy()
"""validate_frame's ranges of the :data:`VALUE_COLUMNS`; NaN is in none."""
_VEHICLE_IDS: dict[bytes, str] = {}
"""UTF-8 vehicle ids already decoded (a fleet repeats them in every poll)."""


@dataclass(frozen=True, slots=True, eq=False)
class FrameColumns:
    """The valid frames of a batch of records, column by column, in record order.

    Frames of record ``r`` are ``bounds[r]:bounds[r + 1]``; ``errors[r]`` is why record ``r``
    has none (what :func:`decode_frames` raises for it), else None.
    """

    vehicle_id: list[str]
    seq: list[int]
    t_event_ns: list[int]
    times: np.ndarray
    """``t_event_ns`` as int64 ``[N]``."""
    values: np.ndarray
    """float64 ``[N, 8]`` in :data:`VALUE_COLUMNS` order; lat/lon NaN when absent."""
    gnss_quality: np.ndarray
    """int8 ``[N]``, -1 when absent."""
    bounds: list[int]
    errors: list[ValidationError | None]

    def __len__(self) -> int:
        return len(self.vehicle_id)

    def frame(self, i: int) -> SensorFrame:
        x, y, v, h, w, a, lat, lon = self.values[i].tolist()
        q = int(self.gnss_quality[i])
        seq, t = self.seq[i], self.t_event_ns[i]
        vid = self.vehicle_id[i]
        lat_, lon_ = from_opt_float(lat), from_opt_float(lon)
        return SensorFrame(vid, seq, t, x, y, v, h, w, a, lat_, lon_, None if q == -1 else q)

    def frames(self, record: int) -> list[SensorFrame]:
        """The frames of one record."""
        return [self.frame(i) for i in range(self.bounds[record], self.bounds[record + 1])]

    @classmethod
    def of(
        cls,
        records: Sequence[Sequence[SensorFrame]],
        errors: Sequence[ValidationError | None] | None = None,
    ) -> FrameColumns:
        """Columns of records already decoded (tests, and the rare record only the
        per-record decoder reads)."""
        frames = [f for rec in records for f in rec]
        rows = [(f.x, f.y, f.speed, f.heading, f.yaw_rate, f.accel) for f in frames]
        lat_lon = [(opt_float(f.lat), opt_float(f.lon)) for f in frames]
        values = np.hstack(
            [np.array(rows, np.float64).reshape(-1, 6), np.array(lat_lon).reshape(-1, 2)]
        )
        seq, t = [f.seq for f in frames], [f.t_event_ns for f in frames]
        q = [-1 if f.gnss_quality is None else f.gnss_quality for f in frames]
        bounds = np.cumsum([0, *map(len, records)]).tolist()
        return cls(
            [f.vehicle_id for f in frames],
            seq,
            t,
            np.array(t, np.int64),
            values,
            np.array(q, np.int8),
            bounds,
            list(errors) if errors is not None else [None] * len(records),
        )


def decode_columns(values: Sequence[bytes]) -> FrameColumns:
    """Decode sensor values (a poll's records) at once into columns.

    The same frames and the same errors as :func:`decode_frames` record by record. The
    framing (a count, then per frame a length-prefixed vehicle id) is followed byte by byte;
    the fixed-size frame bodies of the whole poll are then read and checked against
    validate_frame's bounds in one vectorised pass. A record that is not whole and valid is
    handed to :func:`decode_frames`, whose exception (CodecError or ValidationError) is the
    record's error.
    """
    buf = b"".join(values)
    rec, body_at, raw_ids, bad = _framing(buf, values)
    ints, vals, q = _bodies(buf, body_at)
    vids = _vehicle_ids(raw_ids)
    suspect = set(bad)
    if len(rec):
        fine = _plausible(ints, vals, q).tolist()
        suspect.update(r for r, ok, v in zip(rec, fine, vids, strict=True) if not ok or v is None)
    errors: list[ValidationError | None] = [None] * len(values)
    for r in sorted(suspect):
        try:
            decode_frames(values[r])
        except ValidationError as exc:
            errors[r] = exc
        else:  # never seen: the two passes read and check exactly as decode_frames does
            return _per_record(values)
    if suspect:  # drop the frames of bad records
        keep = [errors[r] is None for r in rec]
        rec = [r for r, k in zip(rec, keep, strict=True) if k]
        vids = [v for v, k in zip(vids, keep, strict=True) if k]
        ints, vals, q = ints[keep], vals[keep], q[keep]
    seq, times = ints[:, 0].tolist(), ints[:, 1].copy()
    return FrameColumns(
        vids,  # type: ignore[arg-type]  # None only in records dropped above
        seq,
        times.tolist(),
        times,
        vals,
        q,
        _bounds(rec, len(values)),
        errors,
    )


def _framing(
    buf: bytes, values: Sequence[bytes]
) -> tuple[list[int], list[int], list[bytes], list[int]]:
    """Follow every record's framing: per frame its record, where its body starts and its
    raw vehicle id; and the records decode_frames cannot read (empty, truncated, no frames,
    trailing bytes)."""
    rec: list[int] = []
    body_at: list[int] = []
    raw_ids: list[bytes] = []
    bad: list[int] = []
    body = _BODY.size
    end = 0
    for r, value in enumerate(values):
        start, end = end, end + len(value)
        first = len(rec)
        count = buf[start] | buf[start + 1] << 8 if end - start >= _COUNT.size else 0
        at = start + _COUNT.size
        for _ in range(count):
            if at >= end or at + 1 + buf[at] + body > end:
                break
            b = at + 1 + buf[at]
            rec.append(r)
            body_at.append(b)
            raw_ids.append(buf[at + 1 : b])
            at = b + body
        else:
            if count and at == end:
                continue
        del rec[first:], body_at[first:], raw_ids[first:]
        bad.append(r)
    return rec, body_at, raw_ids, bad


def _bounds(rec: list[int], n: int) -> list[int]:
    """Frames of record r are bounds[r]:bounds[r + 1] (``rec`` is sorted)."""
    bounds = [0] * (n + 1)
    for r in rec:
        bounds[r + 1] += 1
    for r in range(n):
        bounds[r + 1] += bounds[r]
    return bounds


def _bodies(buf: bytes, at: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The frame bodies starting at ``at``: seq and t_event_ns (int64 ``[N, 2]``), the
    :data:`VALUE_COLUMNS` (float64 ``[N, 8]``) and gnss_quality (int8 ``[N]``)."""
    if not at:
        return np.zeros((0, 2), np.int64), np.zeros((0, 8)), np.zeros(0, np.int8)
    size = _BODY.size
    bodies = b"".join([buf[a : a + size] for a in at])
    n = len(at)
    ints = np.ndarray((n, 2), "<i8", bodies, 0, (size, 8)).astype(np.int64)
    vals = np.ndarray((n, 8), "<f8", bodies, 16, (size, 8)).astype(np.float64)
    return ints, vals, np.ndarray(n, np.int8, bodies, size - 1, (size,))


_READONLY_INT8 = numba.types.Array(numba.int8, 1, "A", readonly=True)
"""gnss_quality as :func:`_bodies` gives it: a view of the poll's bytes."""


@numba.njit(
    numba.boolean[::1](numba.int64[:, ::1], numba.float64[:, ::1], _READONLY_INT8),
    cache=True,
    nogil=True,
)
def _plausible(ints, vals, q):
    """Per frame: would validate_frame accept its numbers (ranges, lat/lon together)?

    Compiled, row by row (a poll is often one frame); ``_LOW``/``_HIGH`` are frozen in at
    compile time. A NaN is in no range; lat and lon are checked only when either is present.
    """
    ok = np.empty(len(q), np.bool_)
    for i in range(len(q)):
        good = ints[i, 0] >= 0 and ints[i, 1] >= 0 and q[i] >= -1
        last = 6 if np.isnan(vals[i, 6]) and np.isnan(vals[i, 7]) else 8
        for c in range(last):
            good = good and _LOW[c] <= vals[i, c] <= _HIGH[c]
        ok[i] = good
    return ok


# A kernel's first call types its arguments in Python (importing numpy.ma): ~1-35 ms, paid
# here at import rather than by the first frame served.
_plausible(*_bodies(bytes(_BODY.size), [0]))


def _vehicle_ids(raw: list[bytes]) -> list[str | None]:
    """Vehicle ids by their bytes (None: not UTF-8, empty or too long), decoding each
    distinct one once."""
    known = _VEHICLE_IDS
    out: list[str | None] = [known.get(r) for r in raw]
    for i, vid in enumerate(out):
        if vid is None and 0 < len(raw[i]) <= MAX_VEHICLE_ID_BYTES:
            try:
                vid = raw[i].decode()
            except UnicodeDecodeError:
                continue
            if len(known) > 1_000_000:  # vehicles come and go: keep the cache bounded
                known.clear()
            out[i] = known[raw[i]] = vid
    return out


def _per_record(values: Sequence[bytes]) -> FrameColumns:
    """Columns through decode_frames record by record (what decode_columns must equal)."""
    records: list[list[SensorFrame]] = []
    errors: list[ValidationError | None] = []
    for value in values:
        try:
            records.append(decode_frames(value))
            errors.append(None)
        except ValidationError as exc:
            records.append([])
            errors.append(exc)
    return FrameColumns.of(records, errors)


_TAG = (headers.SCHEMA, headers.schema_tag(SCHEMA_NAME, SCHEMA_VERSION))


def check_frame_headers_many(
    hdrs: Sequence[Headers | None],
) -> tuple[list[int], list[ValidationError | None]]:
    """:func:`check_frame_headers` for a poll's records: t_produce_ns per record (0 where
    it has an error) and the error per record (None if none).

    Headers exactly as :func:`frame_headers` writes them (tag, then an 8-byte stamp) have
    their stamps checked at once; any other record goes through check_frame_headers.
    """
    plain: list[int] = []
    raw: list[bytes] = []
    for r, h in enumerate(hdrs):
        if type(h) is list and len(h) == 2 and type(h[0]) is tuple and h[0] == _TAG:
            s = h[1]
            if type(s) is tuple and len(s) == 2 and s[0] == headers.T_PRODUCE_NS:
                v = s[1]
                if type(v) is bytes and len(v) == 8:
                    plain.append(r)
                    raw.append(v)
    out = [0] * len(hdrs)
    errors: list[ValidationError | None] = [None] * len(hdrs)
    checked = [False] * len(hdrs)
    latest = headers.now_ns() + headers.MAX_FUTURE_NS
    for r, t in zip(plain, struct.unpack(f">{len(raw)}q", b"".join(raw)), strict=True):
        if 0 <= t <= latest:
            out[r], checked[r] = t, True
    for r, done in enumerate(checked):
        if not done:
            try:
                out[r] = check_frame_headers(hdrs[r])
            except ValidationError as exc:
                errors[r] = exc
    return out, errors
