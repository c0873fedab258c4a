"""Column mappings: how a foreign log's columns and units map onto sensor frames.

A mapping names the time column and its unit, the position columns (lat/lon degrees or
x/y metres), and optional speed, heading/course and yaw-rate columns, each with unit and
sign convention. Presets cover common logger shapes; JSON files and flags override them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from schemas.errors import ConfigError

TIME_UNITS = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}
#: Clock times of day packed into a number (GNSS receivers): hhmmss.sss, hhmmsscc, hhmmssmmm.
PACKED_CLOCKS = {"hhmmss": 0, "hhmmsscc": 2, "hhmmssmmm": 3}
#: ``iso``: ISO-8601 date-time strings or a timestamp column (naive ones taken as UTC).
TIME_FORMATS = (*TIME_UNITS, *PACKED_CLOCKS, "iso")
SPEED_UNITS = {"m/s": 1.0, "km/h": 1 / 3.6, "mph": 0.44704, "knots": 0.514444}
ANGLE_UNITS = {"rad": 1.0, "deg": math.pi / 180}
#: ``enu``: counter-clockwise from east (ours); ``compass``: clockwise from north.
HEADING_CONVENTIONS = ("enu", "compass")
#: ``ccw``: counter-clockwise positive (ours, ISO 8855 z-up); ``cw``: clockwise positive.
YAW_SIGNS = ("ccw", "cw")


@dataclass(frozen=True, kw_only=True)
class ColumnMapping:
    """Where each sensor quantity is in the source file, and in which unit/convention."""

    time: str = "time"
    time_unit: str = "s"
    row_time: str | None = None
    """The clock of every row, when ``time`` is the GNSS fix clock: IMU samples, and rows
    without a fix time, are timed by it, shifted onto ``time`` by the median offset."""
    row_time_unit: str = "s"
    lat: str | None = "lat"
    lon: str | None = "lon"
    x: str | None = None
    y: str | None = None
    speed: str | None = None
    speed_unit: str = "m/s"
    heading: str | None = None
    heading_unit: str = "deg"
    heading_convention: str = "compass"
    yaw_rate: str | None = None
    yaw_rate_unit: str = "deg/s"
    yaw_rate_sign: str = "ccw"
    accel: str | None = None
    vehicle_id: str | None = None
    gnss_quality: str | None = None

    def __post_init__(self) -> None:
        _one_of("time_unit", self.time_unit, TIME_FORMATS)
        _one_of("row_time_unit", self.row_time_unit, TIME_FORMATS)
        _one_of("speed_unit", self.speed_unit, SPEED_UNITS)
        _one_of("heading_unit", self.heading_unit, ANGLE_UNITS)
        _one_of("heading_convention", self.heading_convention, HEADING_CONVENTIONS)
        _one_of("yaw_rate_unit", self.yaw_rate_unit.removesuffix("/s"), ANGLE_UNITS)
        _one_of("yaw_rate_sign", self.yaw_rate_sign, YAW_SIGNS)
        latlon = self.lat is not None and self.lon is not None
        xy = self.x is not None and self.y is not None
        if latlon == xy:
            raise ConfigError(
                "mapping needs either lat+lon columns or x+y columns (set the other pair to null)"
            )

    @property
    def geodetic(self) -> bool:
        return self.x is None

    def columns(self) -> dict[str, str]:
        """Quantity -> source column, for every mapped column."""
        names = (
            "time",
            "row_time",
            "lat",
            "lon",
            "x",
            "y",
            "speed",
            "heading",
            "yaw_rate",
            "accel",
        )
        out = {n: getattr(self, n) for n in (*names, "vehicle_id", "gnss_quality")}
        return {k: v for k, v in out.items() if v is not None}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _one_of(name: str, value: str, allowed: Any) -> None:
    if value not in allowed:
        raise ConfigError(f"mapping {name}={value!r}; use one of {', '.join(allowed)}")


#: Ready-made mappings for common log shapes.
PRESETS: dict[str, ColumnMapping] = {
    # Motorsport/vehicle data logger: ms since start, speed km/h, compass course, gyro deg/s
    # counter-clockwise positive. (It said clockwise until checked on a real drive: over a
    # 29 deg left curve the integrated yaw rate is +36 deg, i.e. left turns are positive.)
    "datalogger": ColumnMapping(
        time="millis",
        time_unit="ms",
        lat="lat",
        lon="lon",
        speed="speed_kmh",
        speed_unit="km/h",
        heading="course_deg",
        heading_unit="deg",
        heading_convention="compass",
        yaw_rate="yaw_rate_dps",
        yaw_rate_unit="deg/s",
        yaw_rate_sign="ccw",
    ),
    # Phone/receiver GNSS log (Android Location-like): seconds, m/s, bearing from north.
    "gnss": ColumnMapping(
        time="time",
        time_unit="s",
        lat="lat",
        lon="lon",
        speed="speed",
        speed_unit="m/s",
        heading="bearing",
        heading_unit="deg",
        heading_convention="compass",
    ),
    # A canonical log exported to CSV (x/y metres, our units).
    "canonical": ColumnMapping(
        time="t_event_ns",
        time_unit="ns",
        lat=None,
        lon=None,
        x="x",
        y="y",
        speed="speed",
        heading="heading",
        heading_unit="rad",
        heading_convention="enu",
        yaw_rate="yaw_rate",
        yaw_rate_unit="rad/s",
        accel="accel",
        vehicle_id="vehicle_id",
    ),
}


#: Column fields, and the unit fields that only mean something with their column.
COLUMN_FIELDS = (
    "time", "row_time", "lat", "lon", "x", "y", "speed", "heading", "yaw_rate", "accel",
    "vehicle_id", "gnss_quality",
)  # fmt: skip
UNIT_FIELDS = {
    "time_unit": "time",
    "row_time_unit": "row_time",
    "speed_unit": "speed",
    "heading_unit": "heading",
    "heading_convention": "heading",
    "yaw_rate_unit": "yaw_rate",
    "yaw_rate_sign": "yaw_rate",
}
#: A column flag with this value means "the log has no such column, do not look for one".
NO_COLUMN = "none"


def given_fields(
    preset: str | None = None, path: str | Path | None = None, **overrides: Any
) -> dict[str, Any]:
    """The mapping fields a user stated: a preset's, a JSON file's, then non-empty flags.

    A preset states its columns and their units (not the units of columns it lacks). A
    column flag of ``none`` states that there is no such column (value None).
    """
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown mapping preset {preset!r}; use one of {', '.join(PRESETS)}")
    given: dict[str, Any] = {}
    if preset:
        full = asdict(PRESETS[preset])
        given = {k: v for k, v in full.items() if k in COLUMN_FIELDS and v is not None}
        given.update({k: full[k] for k, col in UNIT_FIELDS.items() if full[col] is not None})
        if "x" in given:
            given.update(lat=None, lon=None)
    given.update(_read_file(path) if path is not None else {})
    flags = {k: v for k, v in overrides.items() if v not in (None, "")}
    flags = {k: (None if k in COLUMN_FIELDS and v == NO_COLUMN else v) for k, v in flags.items()}
    if flags.get("x") and flags.get("y") and not (flags.get("lat") or flags.get("lon")):
        flags.update(lat=None, lon=None)  # x/y flags switch a lat/lon preset to metres
    elif flags.get("lat") and flags.get("lon") and not (flags.get("x") or flags.get("y")):
        flags.update(x=None, y=None)
    given.update(flags)
    unknown = set(given) - {f.name for f in fields(ColumnMapping)}
    if unknown:
        raise ConfigError(f"unknown mapping fields {sorted(unknown)}")
    return given


def _read_file(path: str | Path) -> dict[str, Any]:
    known = {f.name for f in fields(ColumnMapping)}
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read mapping file {path}: {exc}") from exc
    if not isinstance(raw, dict) or set(raw) - known:
        bad = sorted(set(raw) - known) if isinstance(raw, dict) else raw
        raise ConfigError(f"mapping file {path}: unknown keys {bad}; known: {sorted(known)}")
    return raw


def load_mapping(
    preset: str | None = None, path: str | Path | None = None, **overrides: Any
) -> ColumnMapping:
    """A preset, updated by a JSON file's keys, then by non-None ``overrides``."""
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown mapping preset {preset!r}; use one of {', '.join(PRESETS)}")
    base = PRESETS[preset] if preset else ColumnMapping()
    updates: dict[str, Any] = _read_file(path) if path is not None else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    if given.get("x") and given.get("y") and not (given.get("lat") or given.get("lon")):
        given.update(lat=None, lon=None)  # x/y flags switch a lat/lon preset to metres
    elif given.get("lat") and given.get("lon") and not (given.get("x") or given.get("y")):
        given.update(x=None, y=None)
    updates.update(given)
    unknown = set(updates) - {f.name for f in fields(ColumnMapping)}
    if unknown:
        raise ConfigError(f"unknown mapping fields {sorted(unknown)}")
    try:
        return replace(base, **updates)
    except TypeError as exc:
        raise ConfigError(f"bad mapping: {exc}") from exc
