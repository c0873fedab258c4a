"""A poll's sensor records decoded at once, column by column (the serving hot path).

:func:`decode_columns` gives the same frames and the same errors as
:func:`schemas.sensor.decode_frames` record by record, and :func:`check_frame_headers_many`
the same stamps and errors as :func:`schemas.sensor.check_frame_headers`, in a few
vectorised passes per poll instead of a few Python objects per frame.
"""

from __future__ import annotations

import itertools
import math
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
_COUNT_SIZE, _BODY_SIZE = _COUNT.size, _BODY.size
_FIELDS = (_BODY_SIZE - 1) // 8
"""Eight-byte fields of a body (seq, t_event_ns, the values); gnss_quality is its last byte."""


@dataclass(slots=True, eq=False)
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

    The same frames and the same errors as :func:`decode_frames` record by record. One
    compiled pass (:func:`_scan`) follows every record's framing (a count, then per frame a
    length-prefixed vehicle id and a fixed-size body), reads the bodies and checks them
    against validate_frame's bounds. A record that is not whole and valid is handed to
    :func:`decode_frames`, whose exception (CodecError or ValidationError) is the record's
    error.
    """
    buf = b"".join(values)
    ends = np.fromiter(itertools.accumulate(map(len, values)), np.int64, len(values))
    ints, vals, q, bounds, flagged = _scan(np.frombuffer(buf, np.uint8), ends)
    records, id_at, seq_list, t_list = ints.tolist()
    vids = _vehicle_ids([buf[a + 1 : a + 1 + buf[a]] for a in id_at])
    suspect = set(flagged.tolist())
    if None in vids:
        suspect.update(r for r, v in zip(records, vids, strict=True) if v is None)
    errors: list[ValidationError | None] = [None] * len(values)
    for r in sorted(suspect):
        try:
            decode_frames(values[r])
        except ValidationError as exc:
            errors[r] = exc
        else:  # never seen: the two passes read and check exactly as decode_frames does
            return _per_record(values)
    times = ints[3]
    if suspect:  # drop the frames of bad records
        keep = [errors[r] is None for r in records]
        vids = [v for v, k in zip(vids, keep, strict=True) if k]
        rec, _, seq, times = ints[:, keep]
        vals, q, seq_list, t_list = vals[keep], q[keep], seq.tolist(), times.tolist()
        bounds = np.concatenate([[0], np.cumsum(np.bincount(rec, minlength=len(values)))])
    return FrameColumns(
        vids,  # type: ignore[arg-type]  # None only in records dropped above
        seq_list,
        t_list,
        times,
        vals,
        q,
        bounds.tolist(),
        errors,
    )


@numba.njit(cache=True, nogil=True)
def _plausible(seq, t, vals, q):
    """Would validate_frame accept these numbers (ranges, lat/lon together)? ``_LOW`` and
    ``_HIGH`` are frozen in at compile time; a NaN is in no range; lat and lon are checked
    only when either is present."""
    good = seq >= 0 and t >= 0 and q >= -1
    last = 6 if np.isnan(vals[6]) and np.isnan(vals[7]) else 8
    for c in range(last):
        good = good and _LOW[c] <= vals[c] <= _HIGH[c]
    return good


_I64, _F64 = numba.int64[::1], numba.float64[:, ::1]


@numba.njit(
    numba.types.Tuple((numba.int64[:, ::1], _F64, numba.int8[::1], _I64, _I64))(
        numba.types.Array(numba.uint8, 1, "C", readonly=True), _I64
    ),
    cache=True,
    nogil=True,
)
def _scan(buf, ends):
    """A poll's bytes (records ending at ``ends``) as columns of the frames of its whole
    records: ``[4, N]`` of record, where the vehicle id's length byte is, seq and
    t_event_ns (one array: each returned array costs a boxing); the :data:`VALUE_COLUMNS`
    and gnss_quality; frame bounds per record; and the records that are not whole (empty,
    truncated, no frames, trailing bytes) or hold a frame out of validate_frame's ranges,
    in order."""
    counts = np.zeros(len(ends), np.int64)  # frames of each whole record, else 0
    whole = np.zeros(len(ends), np.bool_)
    start = 0
    for r in range(len(ends)):
        end = ends[r]
        count = 0
        if end - start >= _COUNT_SIZE:
            count = np.int64(buf[start]) | np.int64(buf[start + 1]) << 8
        at, k = start + _COUNT_SIZE, 0
        while k < count and at < end and at + 1 + buf[at] + _BODY_SIZE <= end:
            at, k = at + 1 + buf[at] + _BODY_SIZE, k + 1
        whole[r] = count > 0 and k == count and at == end
        counts[r] = count if whole[r] else 0
        start = end
    bounds = np.zeros(len(ends) + 1, np.int64)
    bounds[1:] = np.cumsum(counts)
    n = bounds[-1]
    ints = np.empty((4, n), np.int64)
    rec, id_at, seq, times = ints[0], ints[1], ints[2], ints[3]
    vals, q = np.empty((n, 8), np.float64), np.empty(n, np.int8)
    flagged = ~whole
    word = np.empty(1, np.uint64)  # a little-endian 8-byte field, read as int64 or float64
    as_int, as_float = word.view(np.int64), word.view(np.float64)
    for r in range(len(ends)):
        at = (ends[r - 1] if r else 0) + _COUNT_SIZE
        for i in range(bounds[r], bounds[r + 1]):
            rec[i], id_at[i] = r, at
            body = at + 1 + buf[at]
            for f in range(_FIELDS):  # seq, t_event_ns, then the values
                w = np.uint64(0)
                for b in range(8):
                    w |= np.uint64(buf[body + 8 * f + b]) << np.uint64(8 * b)
                word[0] = w
                if f == 0:
                    seq[i] = as_int[0]
                elif f == 1:
                    times[i] = as_int[0]
                else:
                    vals[i, f - 2] = as_float[0]
            q[i] = np.int8(buf[body + _BODY_SIZE - 1])
            flagged[r] |= not _plausible(seq[i], times[i], vals[i], q[i])
            at = body + _BODY_SIZE
    return ints, vals, q, bounds, np.flatnonzero(flagged).astype(np.int64)


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
    their stamp read in place; any other record goes through check_frame_headers.
    """
    out = [0] * len(hdrs)
    errors: list[ValidationError | None] = [None] * len(hdrs)
    latest = headers.now_ns() + headers.MAX_FUTURE_NS
    stamp_key = headers.T_PRODUCE_NS
    for r, h in enumerate(hdrs):
        if type(h) is list and len(h) == 2 and type(h[0]) is tuple and h[0] == _TAG:
            s = h[1]
            if type(s) is tuple and len(s) == 2 and s[0] == stamp_key:
                v = s[1]
                if type(v) is bytes and len(v) == 8:
                    t = int.from_bytes(v, "big", signed=True)
                    if 0 <= t <= latest:
                        out[r] = t
                        continue
        try:
            out[r] = check_frame_headers(h)
        except ValidationError as exc:
            errors[r] = exc
    return out, errors


# A kernel's first call types its arguments in Python (importing numpy.ma): ~1-35 ms, paid
# here at import rather than by the first frame served.
decode_columns([])
