"""Which column of a foreign log holds which quantity, found from its header and values.

Names are compared after normalising (lower case, letters and digits only), so
``locationLatitude``, ``Lat [deg]`` and ``lat_deg`` all match. A trailing unit in the name
(``speed_kmh``, ``yaw_rate_dps``, ``time_ms``) is kept as a hint. Each quantity has a list
of names in priority order (:data:`ALIASES`); when several columns match, the first in
that list wins, except that for time a GNSS fix time wins over a row time, and a name that
states its unit wins over one that does not.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.errors import ConfigError

#: Quantity -> normalised base names, highest priority first.
# fmt: off
ALIASES: dict[str, tuple[str, ...]] = {
    # GNSS fix times first (positions are what the model learns from), then row times.
    "time": (
        "locationtimestamp", "gpstime", "gnsstime", "fixtime", "gpstimestamp",
        "tevent", "millis", "utc", "time", "timestamp", "t", "epoch", "datetime",
        "loggingtime", "recordtime",
    ),
    "lat": ("lat", "latitude", "locationlatitude", "gpslat", "gnsslat", "gpslatitude"),
    "lon": (
        "lon", "lng", "long", "longitude", "locationlongitude", "gpslon", "gpslng",
        "gnsslon", "gpslongitude",
    ),
    "x": ("x", "east", "easting", "posx", "xeast"),
    "y": ("y", "north", "northing", "posy", "ynorth"),
    "speed": (
        "speed", "velocity", "vel", "v", "locationspeed", "gpsspeed", "gnssspeed",
        "groundspeed", "speedoverground", "sog", "vehiclespeed",
    ),
    "heading": (
        "course", "locationcourse", "courseoverground", "cog", "gpscourse", "bearing",
        "heading", "track", "yaw",
    ),
    "yaw_rate": (
        "yawrate", "yawvel", "turnrate", "rateofturn", "motionrotationratez",
        "rotationratez", "gyroz", "gyrorotationz", "gz", "wz", "omegaz", "angularvelocityz",
    ),
    "accel": ("accel", "acceleration", "accellong", "longaccel", "longitudinalacceleration"),
    "vehicle_id": (
        "vehicleid", "vehicle", "vehiclename", "vid", "carid", "car", "deviceid", "device",
        "unitid", "trackerid", "id",
    ),
    "gnss_quality": ("gnssquality", "gpsquality", "fixquality", "quality", "fixtype", "fix"),
}
# fmt: on

# fmt: off
_TIME_SUFFIX = {
    "since1970": "s", "s": "s", "sec": "s", "secs": "s", "seconds": "s",
    "ms": "ms", "msec": "ms", "millis": "ms", "us": "us", "usec": "us", "micros": "us",
    "ns": "ns", "nanos": "ns",
}
_SPEED_SUFFIX = {
    "mps": "m/s", "ms": "m/s", "kmh": "km/h", "kph": "km/h", "kmph": "km/h", "mph": "mph",
    "kn": "knots", "kt": "knots", "kts": "knots", "knot": "knots", "knots": "knots",
}
_ANGLE_SUFFIX = {"deg": "deg", "degrees": "deg", "rad": "rad", "radians": "rad"}
_RATE_SUFFIX = {
    "dps": "deg/s", "degs": "deg/s", "degps": "deg/s", "degpersec": "deg/s",
    "rads": "rad/s", "radps": "rad/s", "radpersec": "rad/s",
}
_IMPLIED = {"millis": "ms"}
_SUFFIXES: dict[str, dict[str, str]] = {
    "time": _TIME_SUFFIX,
    "lat": {"deg": "deg", "degrees": "deg"},
    "lon": {"deg": "deg", "degrees": "deg"},
    "x": {"m": "m", "meters": "m", "metres": "m"},
    "y": {"m": "m", "meters": "m", "metres": "m"},
    "speed": _SPEED_SUFFIX,
    "heading": _ANGLE_SUFFIX,
    "yaw_rate": _RATE_SUFFIX,
    "accel": {"mss": "m/s2", "ms2": "m/s2"},
}
# fmt: on

#: Plausible epoch ranges of a time column's median value, per unit (years ~1979-2128).
_EPOCH = {"s": (3e8, 5e9), "ms": (3e11, 5e12), "us": (3e14, 5e15), "ns": (3e17, 5e18)}
#: Plausible median row spacing of a relative time column, per unit (0.2 Hz .. 1 kHz).
_SPACING = {"s": (1e-3, 5.0), "ms": (1.0, 5e3), "us": (1e3, 5e6), "ns": (1e6, 5e9)}
DATETIME = "iso"
"""Time unit of a column of date-time strings or timestamps (naive ones are taken as UTC)."""


def normalise(name: str) -> str:
    """``'Lat [deg]'`` -> ``'latdeg'``: lower case, letters and digits only."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


@dataclass(frozen=True, kw_only=True)
class Match:
    """A column that matches a quantity, and the unit its name states (if any)."""

    column: str
    rank: int
    unit_hint: str | None = None


def match(quantity: str, name: str) -> Match | None:
    """How ``name`` matches ``quantity``, or None."""
    norm = normalise(name)
    suffixes = _SUFFIXES.get(quantity, {})
    for rank, base in enumerate(ALIASES[quantity]):
        if norm == base:
            return Match(column=name, rank=rank, unit_hint=_IMPLIED.get(base))
        if norm.startswith(base) and norm[len(base) :] in suffixes:
            return Match(column=name, rank=rank, unit_hint=suffixes[norm[len(base) :]])
    return None


def candidates(table: pa.Table, quantity: str) -> list[Match]:
    """Columns with data that match ``quantity``, best first."""
    found = []
    for name in table.column_names:
        m = match(quantity, name)
        if m is None or table.column(name).null_count == table.num_rows:
            continue
        if quantity in ("lat", "lon", "x", "y", "speed", "heading", "yaw_rate", "accel"):
            v = numeric(table, name)
            finite = v[np.isfinite(v)]
            if finite.size == 0:
                continue
            limit = {"lat": 90.0, "lon": 180.0}.get(quantity)
            if limit is not None and np.abs(finite).max() > limit:
                continue
        if quantity == "vehicle_id" and not _looks_like_ids(table.column(name)):
            continue
        found.append(m)
    if quantity == "time":
        gnss = len(ALIASES["time"][:5])
        return sorted(found, key=lambda m: (m.rank >= gnss, m.unit_hint is None, m.rank))
    return sorted(found, key=lambda m: m.rank)


def _looks_like_ids(col: pa.ChunkedArray) -> bool:
    """A vehicle id repeats: a per-row counter or a float column is not one."""
    if pa.types.is_floating(col.type):
        return False
    distinct = len(pc.unique(col.drop_null()))
    return distinct <= max(1, len(col) // 20)


def numeric(table: pa.Table, name: str) -> np.ndarray:
    """A column as float64, NaN where empty or not a number."""
    col = table.column(name)
    if pa.types.is_null(col.type):
        return np.full(len(col), np.nan)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        col = pc.utf8_trim_whitespace(col)
        col = pc.replace_substring_regex(col, r"^([-+]?\d+),(\d+)$", r"\1.\2")  # 52,1 -> 52.1
        ok = pc.utf8_is_numeric(pc.replace_substring_regex(col, r"^[-+]|[.eE+-]", ""))
        col = pc.if_else(ok, col, pa.scalar(None, col.type))
    try:
        # safe=False: epoch nanoseconds exceed 2**53; float64 keeps them to ~0.25 us.
        values = pc.cast(col, pa.float64(), safe=False)
        return values.to_numpy(zero_copy_only=False).astype(np.float64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ConfigError(f"column {name!r} is not numeric ({col.type}): {exc}") from exc


def is_datetime(table: pa.Table, name: str) -> bool:
    """A timestamp column, or strings that parse as ISO-8601 date-times."""
    col = table.column(name)
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        return True
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        return False
    sample = [s for s in col.drop_null().slice(0, 20).to_pylist() if s.strip()]
    return bool(sample) and all(_parse_iso(s) is not None for s in sample)


def _parse_iso(text: str) -> float | None:
    try:
        stamp = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp() * 1e9


def time_ns(table: pa.Table, name: str, unit: str) -> np.ndarray:
    """A time column in float ns (NaN where empty); ``unit`` as in ``ColumnMapping``."""
    from ingest.mapping import PACKED_CLOCKS, TIME_UNITS

    col = table.column(name)
    if unit in PACKED_CLOCKS:
        return unpack_clock(numeric(table, name), PACKED_CLOCKS[unit])
    if unit != DATETIME:
        return numeric(table, name) * TIME_UNITS[unit]
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        ns = pc.cast(pc.cast(col, pa.timestamp("ns")), pa.int64()).to_numpy(zero_copy_only=False)
        return np.where(col.is_null().to_numpy(zero_copy_only=False), np.nan, ns.astype(float))
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise ConfigError(f"time column {name!r} ({col.type}) holds no date-times; pass its unit")
    parsed = [_parse_iso(s) if s else None for s in col.to_pylist()]
    return np.array([np.nan if p is None else p for p in parsed], float)


def unpack_clock(values: np.ndarray, digits: int) -> np.ndarray:
    """ns since midnight of ``hhmmss`` numbers with ``digits`` sub-second digits; a clock
    that runs past midnight (in row order) keeps counting into the next day."""
    scale = 10.0**digits
    hh, rest = np.divmod(values, 1e4 * scale)
    mm, rest = np.divmod(rest, 1e2 * scale)
    ns = (hh * 3600 + mm * 60) * 1e9 + rest / scale * 1e9
    finite = np.isfinite(ns)
    back = np.zeros(len(ns))
    back[finite] = np.cumsum(np.r_[0, np.diff(ns[finite]) < -43_200e9]) * 86_400e9
    return ns + back


def packed_clock(values: np.ndarray) -> str | None:
    """The packed clock unit (see ``mapping.PACKED_CLOCKS``) of a column, if it is one.

    It is one when every value reads as a valid hh:mm:ss and, read as a plain number,
    it jumps at minute boundaries (59.9 s -> 100.0) while the unpacked clock runs evenly.
    """
    from ingest.mapping import PACKED_CLOCKS

    finite = values[np.isfinite(values)]
    if finite.size < 3 or (finite < 0).any():
        return None
    plain = np.diff(np.unique(finite))
    for unit, digits in PACKED_CLOCKS.items():
        scale = 10.0**digits
        hh, rest = np.divmod(finite, 1e4 * scale)
        mm, ss = np.divmod(rest, 1e2 * scale)
        if (hh >= 24).any() or (mm >= 60).any() or (ss >= 60 * scale).any():
            continue
        steps = np.diff(np.unique(unpack_clock(finite, digits)))
        jumps = plain.max() / np.median(plain) if plain.size else 0.0
        if jumps > 20 and steps.max() / np.median(steps) < jumps / 10:
            return unit
    return None


def time_units_from_data(values: np.ndarray) -> tuple[list[str], str]:
    """Units a numeric time column could be in, judged from magnitude and row spacing.

    Returns the candidates (usually one) and what decided them, for the summary.
    """
    finite = values[np.isfinite(values)]
    if finite.size < 2:
        raise ConfigError("the time column has fewer than two values; pass --map-time")
    med = float(np.median(np.abs(finite)))
    for unit, (lo, hi) in _EPOCH.items():
        if lo <= med <= hi:
            return [unit], f"epoch {unit}"
    clock = packed_clock(finite)
    if clock:
        return [clock], f"clock times packed as {clock}"
    steps = np.diff(np.unique(finite))
    spacing = float(np.median(steps)) if steps.size else 0.0
    fits = [u for u, (lo, hi) in _SPACING.items() if lo <= spacing <= hi]
    return fits, f"relative, rows {spacing:g} apart"


def pick(matches: Sequence[Match]) -> tuple[Match | None, str]:
    """The first match and a note naming the ones passed over."""
    if not matches:
        return None, ""
    others = [m.column for m in matches[1:]]
    return matches[0], (f" (also matched: {', '.join(others)})" if others else "")


def without_unknown_markers(values: np.ndarray) -> np.ndarray:
    """NaN for an "unknown" marker: one repeated negative integer (-1, -999...) in a column
    of otherwise non-negative values, as phones log speed and course without a fix."""
    neg = values[values < 0]
    if neg.size == 0 or not (values >= 0).any():
        return values
    marker = neg[0]
    if marker <= -1 and marker == round(marker) and (neg == marker).all():
        return np.where(values == marker, np.nan, values)
    return values
