"""Sensor frame: one timestamped vehicle state as the sensors reported it.

Units: x/y local ENU metres (x east, y north) in the log's local frame; speed m/s;
heading rad counter-clockwise from east in [-pi, pi]; yaw_rate rad/s counter-clockwise
positive; accel m/s^2 longitudinal; lat/lon WGS84 degrees; times ns on the sensor clock.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from schemas import headers
from schemas.binary import Reader, from_opt_float, opt_float, pack_string
from schemas.errors import CodecError, ValidationError
from schemas.headers import Headers

SCHEMA_NAME = "sensor_frame"
SCHEMA_VERSION = 1

ARROW_SCHEMA = pa.schema(
    [
        pa.field("vehicle_id", pa.string(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("t_event_ns", pa.int64(), nullable=False),
        pa.field("x", pa.float64(), nullable=False),
        pa.field("y", pa.float64(), nullable=False),
        pa.field("speed", pa.float64(), nullable=False),
        pa.field("heading", pa.float64(), nullable=False),
        pa.field("yaw_rate", pa.float64(), nullable=False),
        pa.field("accel", pa.float64(), nullable=False),
        pa.field("lat", pa.float64(), nullable=True),
        pa.field("lon", pa.float64(), nullable=True),
        pa.field("gnss_quality", pa.int8(), nullable=True),
    ],
    metadata={b"drivestream.schema": f"{SCHEMA_NAME}/{SCHEMA_VERSION}".encode()},
)

# Plausibility bounds; anything outside is a sensor or logging fault, not a vehicle.
MAX_ABS_POSITION_M = 1.0e6
MAX_SPEED_MS = 120.0
MAX_ABS_YAW_RATE = 4.0
MAX_ABS_ACCEL = 30.0
MAX_VEHICLE_ID_BYTES = 128
MAX_GNSS_QUALITY = 127


@dataclass(frozen=True, slots=True)
class SensorFrame:
    """One frame of one vehicle; ``seq`` increases per vehicle."""

    vehicle_id: str
    seq: int
    t_event_ns: int
    x: float
    y: float
    speed: float
    heading: float
    yaw_rate: float
    accel: float
    lat: float | None = None
    lon: float | None = None
    gnss_quality: int | None = None

    def validate(self) -> SensorFrame:
        """Return self, or raise ValidationError naming the first bad field."""
        validate_frame(self)
        return self


def _finite(name: str, value: object, bound: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValidationError(name, f"must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValidationError(name, f"must be finite, got {value}")
    if abs(value) > bound:
        raise ValidationError(name, f"{value} is outside [-{bound}, {bound}]")


def validate_frame(f: SensorFrame) -> None:
    """Raise ValidationError naming the field if ``f`` is not a plausible frame."""
    if not isinstance(f.vehicle_id, str) or not f.vehicle_id:
        raise ValidationError("vehicle_id", "must be a non-empty string")
    if len(f.vehicle_id.encode()) > MAX_VEHICLE_ID_BYTES:
        raise ValidationError("vehicle_id", f"longer than {MAX_VEHICLE_ID_BYTES} bytes")
    for name in ("seq", "t_event_ns"):
        value = getattr(f, name)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
            raise ValidationError(name, f"must be an integer in [0, 2**63), got {value!r}")
    _finite("x", f.x, MAX_ABS_POSITION_M)
    _finite("y", f.y, MAX_ABS_POSITION_M)
    _finite("speed", f.speed, MAX_SPEED_MS)
    if f.speed < 0:
        raise ValidationError("speed", f"must be >= 0 m/s, got {f.speed}")
    _finite("heading", f.heading, math.pi + 1e-6)
    _finite("yaw_rate", f.yaw_rate, MAX_ABS_YAW_RATE)
    _finite("accel", f.accel, MAX_ABS_ACCEL)
    if f.gnss_quality is not None and (
        not isinstance(f.gnss_quality, int) or not 0 <= f.gnss_quality <= MAX_GNSS_QUALITY
    ):
        raise ValidationError(
            "gnss_quality",
            f"must be absent or an integer 0..{MAX_GNSS_QUALITY}, got {f.gnss_quality!r}",
        )
    if (f.lat is None) != (f.lon is None):
        raise ValidationError("lat" if f.lat is None else "lon", "lat and lon come together")
    if f.lat is not None:
        _finite("lat", f.lat, 90.0)
        _finite("lon", f.lon, 180.0)


def frames_to_table(frames: list[SensorFrame]) -> pa.Table:
    """Columnar view of frames with the canonical Arrow schema."""
    columns = {name: [getattr(f, name) for f in frames] for name in ARROW_SCHEMA.names}
    return pa.Table.from_pydict(columns, schema=ARROW_SCHEMA)


def table_to_frames(table: pa.Table) -> list[SensorFrame]:
    """Frames from a table with the canonical schema's columns (extra columns ignored)."""
    missing = [n for n in ARROW_SCHEMA.names if n not in table.column_names]
    required_missing = [n for n in missing if not ARROW_SCHEMA.field(n).nullable]
    if required_missing:
        raise ValidationError(required_missing[0], "column missing from table")
    cols: dict[str, list[Any]] = {
        n: (table.column(n).to_pylist() if n in table.column_names else [None] * table.num_rows)
        for n in ARROW_SCHEMA.names
    }
    return [
        SensorFrame(**{n: cols[n][i] for n in ARROW_SCHEMA.names}) for i in range(table.num_rows)
    ]


# --- Kafka codec -------------------------------------------------------------------------
# Value v1: u16 count, then per frame: str vehicle_id | q seq | q t_event_ns |
# 6d x y speed heading yaw_rate accel | 2d lat lon (NaN = absent) | b gnss_quality (-1 = absent)

_COUNT = struct.Struct("<H")
_BODY = struct.Struct("<qq6d2db")
MAX_FRAMES_PER_RECORD = 1024


def encode_frames(frames: Sequence[SensorFrame]) -> bytes:
    """Encode one or a few frames (normally of one vehicle) as one Kafka value."""
    if not 1 <= len(frames) <= MAX_FRAMES_PER_RECORD:
        raise CodecError("frames", f"need 1..{MAX_FRAMES_PER_RECORD} frames, got {len(frames)}")
    parts = [_COUNT.pack(len(frames))]
    for f in frames:
        parts.append(pack_string(f.vehicle_id))
        parts.append(
            _BODY.pack(
                f.seq,
                f.t_event_ns,
                f.x,
                f.y,
                f.speed,
                f.heading,
                f.yaw_rate,
                f.accel,
                opt_float(f.lat),
                opt_float(f.lon),
                -1 if f.gnss_quality is None else f.gnss_quality,
            )
        )
    return b"".join(parts)


def decode_frames(value: bytes, validate: bool = True) -> list[SensorFrame]:
    """Decode a value made by :func:`encode_frames`; raises CodecError/ValidationError."""
    if not value:
        raise CodecError("value", "empty")
    r = Reader(value, "sensor_frame")
    (count,) = r.unpack(_COUNT)
    if count == 0:
        raise CodecError("frames", "record holds no frames")
    out = []
    for _ in range(count):
        vid = r.string()
        seq, t, x, y, v, h, w, a, lat, lon, q = r.unpack(_BODY)
        frame = SensorFrame(
            vid,
            seq,
            t,
            x,
            y,
            v,
            h,
            w,
            a,
            from_opt_float(lat),
            from_opt_float(lon),
            None if q == -1 else q,
        )
        if validate:
            validate_frame(frame)
        out.append(frame)
    r.done()
    return out


# --- columnar decode: a poll's records in one vectorised pass -----------------------------

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


def _plausible(ints: np.ndarray, vals: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per frame: would validate_frame accept its numbers (ranges, lat/lon together)?"""
    inside = (vals >= _LOW) & (vals <= _HIGH)  # False for NaN too
    inside[:, 6:] |= np.logical_and.reduce(np.isnan(vals[:, 6:]), axis=1, keepdims=True)
    return np.logical_and.reduce(inside, axis=1) & (ints.min(axis=1) >= 0) & (q >= -1)


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


def frame_headers(t_produce_ns: int) -> Headers:
    """Headers of a sensors record: schema tag and the replayer's produce stamp."""
    return [
        (headers.SCHEMA, headers.schema_tag(SCHEMA_NAME, SCHEMA_VERSION)),
        (headers.T_PRODUCE_NS, headers.stamp(t_produce_ns)),
    ]


def check_frame_headers(hdrs: Headers | None) -> int:
    """Check the schema tag; return t_produce_ns (raises if absent or malformed)."""
    headers.check_schema(hdrs, SCHEMA_NAME, SCHEMA_VERSION)
    t = headers.read_stamp(hdrs, headers.T_PRODUCE_NS)
    if t is None:
        raise CodecError(headers.T_PRODUCE_NS, "header missing")
    return t


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
