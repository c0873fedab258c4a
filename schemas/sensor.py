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
