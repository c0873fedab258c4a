"""Import a log with no flags: find its columns, decide its units from the data, say so.

What the user stated (a preset, a mapping file, ``--map-*`` flags) is used as given and
checked against the data like a detected unit; everything else is detected
(:mod:`ingest.columns`) and decided (:mod:`ingest.detect`). :func:`plan` returns the
mapping and the lines of the decisions block the CLI prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ingest import columns as col
from ingest.detect import (
    Reference,
    Verdict,
    check_heading,
    check_speed,
    check_yaw_rate,
    heading_to_enu,
    reference,
    turns,
)
from ingest.importer import ImportOptions, ImportReport, Track, build, locate
from ingest.mapping import UNIT_FIELDS, ColumnMapping
from ingest.resample import samples_by_vehicle
from ingest.source import read_source
from schemas.errors import ConfigError
from schemas.model_spec import InputSpec


@dataclass(frozen=True, kw_only=True)
class Plan:
    """How a log will be read, and the decisions that led there."""

    mapping: ColumnMapping
    options: ImportOptions
    lines: tuple[str, ...]
    track: Track


def plan(
    table: pa.Table,
    name: str,
    given: dict[str, Any],
    options: ImportOptions,
    *,
    force: bool = False,
) -> Plan:
    """Detect what ``given`` leaves open, check what it states; ``name`` is the file name."""
    lines: list[str] = []
    fields: dict[str, Any] = {}
    hints: dict[str, str] = {}

    def choose(quantity: str) -> str | None:
        if quantity in given:
            return given[quantity]
        best, others = col.pick(col.candidates(table, quantity))
        if best is None:
            return None
        if best.unit_hint:
            hints[quantity] = best.unit_hint
        fields[f"_{quantity}_others"] = others
        return best.column

    for q in ("speed", "heading", "yaw_rate", "accel", "gnss_quality"):
        fields[q] = choose(q)
    _positions(table, given, fields, choose, lines)
    fields.update(row_time=None, row_time_unit="s")
    _vehicle(table, name, fields, options, choose, lines)
    _time(table, given, fields, choose, hints, lines, force)
    shown = {k: v for k, v in fields.items() if not k.startswith("_")}
    base = ColumnMapping(**{**shown, **{k: v for k, v in given.items() if k in UNIT_FIELDS}})
    options = replace(options, vehicle_id=fields.get("_vehicle_value"))
    track, unit = _located(table, base, fields["_time_units"], options, lines)
    base = replace(base, time_unit=unit)
    ref = reference(
        track.vid[track.fix], track.t_ns[track.fix], track.x, track.y, options.derive_window_s
    )
    mapping = _checked(table, base, track, ref, given, hints, force, lines)
    for q in ("accel", "gnss_quality"):
        if getattr(mapping, q):
            what = "m/s^2, not checked" if q == "accel" else "not checked"
            lines.append(f"  {q:<9} column {getattr(mapping, q)!r} ({what})")
    return Plan(mapping=mapping, options=options, lines=tuple(lines), track=track)


Chooser = Callable[[str], "str | None"]


def _positions(
    table: pa.Table, given: dict[str, Any], fields: dict[str, Any], choose: Chooser,
    lines: list[str],
) -> None:  # fmt: skip
    stated = [k for k in ("lat", "lon", "x", "y") if given.get(k)]
    if stated:
        for k in ("lat", "lon", "x", "y"):
            fields[k] = given.get(k)
        if fields["lat"] or fields["lon"]:
            fields["lat"] = fields["lat"] or choose("lat")
            fields["lon"] = fields["lon"] or choose("lon")
        else:
            fields["x"] = fields["x"] or choose("x")
            fields["y"] = fields["y"] or choose("y")
    else:
        lat, lon = choose("lat"), choose("lon")
        x, y = (None, None) if lat and lon else (choose("x"), choose("y"))
        if not (lat and lon) and not (x and y):
            raise ConfigError(
                "no position columns found (looked for lat/latitude/locationLatitude with "
                "lon/lng/longitude, or x/y metres); pass --map-lat and --map-lon (or --map-x "
                "and --map-y)"
            )
        fields.update(lat=lat if lat and lon else None, lon=lon if lat and lon else None, x=x, y=y)
    if fields["lat"]:
        lines.append(f"  position  columns {fields['lat']!r}/{fields['lon']!r} (WGS84 degrees)")
    else:
        lines.append(f"  position  columns {fields['x']!r}/{fields['y']!r} (metres, x east)")


def _vehicle(
    table: pa.Table, name: str, fields: dict[str, Any], options: ImportOptions,
    choose: Chooser, lines: list[str],
) -> None:  # fmt: skip
    if options.vehicle_id:
        fields["vehicle_id"] = None
        fields["_vehicle_value"] = options.vehicle_id
        lines.append(f"  vehicle   {options.vehicle_id!r} (--vehicle-id)")
        return
    fields["vehicle_id"] = choose("vehicle_id")
    if fields["vehicle_id"]:
        fields["_vehicle_value"] = None
        n = len(set(table.column(fields["vehicle_id"]).to_pylist()) - {None, ""})
        lines.append(f"  vehicle   column {fields['vehicle_id']!r} ({n} vehicle(s))")
    else:
        fields["_vehicle_value"] = Path(name).stem
        lines.append(f"  vehicle   {Path(name).stem!r} (file name; no vehicle id column)")


def _time(
    table: pa.Table, given: dict[str, Any], fields: dict[str, Any], choose: Chooser,
    hints: dict[str, str], lines: list[str], force: bool,
) -> None:  # fmt: skip
    """The row clock (fewest empty cells, then alias priority) and, where another time
    column steps with the positions, that one as the GNSS fix clock."""
    if "time" in given:
        column, row = given["time"], given.get("row_time")
    else:
        found = col.candidates(table, "time")
        if not found:
            raise ConfigError(
                "no time column found (looked for time/timestamp/t/millis/utc_ms/"
                "locationTimestamp_since1970/ISO date-time strings); pass --map-time and "
                "--map-time-unit"
            )
        row_m = min(found, key=lambda m: table.column(m.column).null_count)
        fix_m = _fix_clock(table, found, row_m, fields)
        hints.update({"time": (fix_m or row_m).unit_hint or "", "row_time": row_m.unit_hint or ""})
        column, row = (fix_m.column, row_m.column) if fix_m else (row_m.column, None)
        others = [m.column for m in found if m.column not in (column, row)]
        if others:
            fields["_time_others"] = f" (also matched: {', '.join(others)})"
    unit, how = _time_unit(table, column, given.get("time_unit"), hints.get("time"), force)
    units = unit.split(",")
    fields.update(time=column, time_unit=units[0], _time_units=units, row_time=row)
    if row is None:
        lines.append(f"  time      column {column!r}, {how}{fields.get('_time_others', '')}")
        return
    row_unit, row_how = _time_unit(
        table, row, given.get("row_time_unit"), hints.get("row_time"), force
    )
    fields["row_time_unit"] = row_unit.split(",")[0]
    lines.append(f"  time      fixes: column {column!r}, {how}")
    lines.append(
        f"            rows (IMU samples): column {row!r}, {row_how}, shifted onto the fix "
        f"clock by the offset at the fixes{fields.get('_time_others', '')}"
    )


def _fix_clock(
    table: pa.Table, found: list[col.Match], row: col.Match, fields: dict[str, Any]
) -> col.Match | None:
    """A time column that changes where the position does: the GNSS fix time."""
    a = col.numeric(table, fields["lat"] or fields["x"])
    b = col.numeric(table, fields["lon"] or fields["y"])
    gnss = np.flatnonzero(np.isfinite(a) & np.isfinite(b))
    if len(gnss) < 3:
        return None
    moved = np.r_[True, (np.diff(a[gnss]) != 0) | (np.diff(b[gnss]) != 0)]
    for m in found:
        if m is row:
            continue
        unit = col.DATETIME if col.is_datetime(table, m.column) else "ns"
        v = col.time_ns(table, m.column, unit)[gnss]
        if np.isfinite(v).mean() < 0.9:
            continue
        ticked = np.r_[True, v[1:] != v[:-1]]
        if _near(moved, ticked) >= 0.8 and _near(ticked, moved) >= 0.8:
            return m
    return None


def _near(events: np.ndarray, others: np.ndarray) -> float:
    """Share of ``events`` with one of ``others`` on the same row or a neighbour (loggers
    may write a fix's position one row before its time)."""
    around = others | np.r_[others[1:], False] | np.r_[False, others[:-1]]
    return float(around[events].mean()) if events.any() else 0.0


def _time_unit(
    table: pa.Table, column: str, claimed: str | None, hint: str | None, force: bool
) -> tuple[str, str]:
    if col.is_datetime(table, column):
        if claimed and claimed != col.DATETIME and not force:
            raise ConfigError(
                f"time column {column!r} holds date-times, not numbers in {claimed}; "
                "drop --map-time-unit (or pass --map-time-unit iso)"
            )
        return col.DATETIME, "ISO-8601 date-times (naive ones taken as UTC)"
    values = col.numeric(table, column)
    fits, seen = col.time_units_from_data(values)
    decisive = seen.startswith("epoch")
    stated = claimed or hint
    source = "as given" if claimed else "from the column name"
    if stated:
        if decisive and stated not in fits and not force:
            raise ConfigError(
                f"time column {column!r}: unit {stated} ({source}) contradicts the data "
                f"({seen}); pass --map-time-unit {fits[0]}, or --force to keep {stated}"
            )
        return stated, f"unit {stated} ({source}; data: {seen})"
    if len(fits) == 1:
        return fits[0], f"unit {fits[0]} (from the data: {seen})"
    return ",".join(fits), seen  # several: _located settles it from the speeds each implies


def _located(
    table: pa.Table, base: ColumnMapping, units: list[str], options: ImportOptions, lines: list[str]
) -> tuple[Track, str]:
    """Locate the fixes; with several possible time units, keep the one giving sane speeds."""
    if len(units) == 1:
        return locate(table, base, options), base.time_unit
    plausible = []
    for u in units:
        track = locate(table, replace(base, time_unit=u), options)
        ref = reference(track.vid[track.fix], track.t_ns[track.fix], track.x, track.y, 1.0)
        top = float(np.percentile(ref.speed, 90)) if len(ref.speed) else 0.0
        if 0.5 <= top <= 90:
            plausible.append((u, track, top))
    if len(plausible) != 1:
        raise ConfigError(
            f"time column {base.time!r}: cannot tell {' from '.join(units) or 'its unit'} from "
            f"the data; pass --map-time-unit {' or '.join(units) or 's'}"
        )
    u, track, top = plausible[0]
    lines.append(
        f"            unit {u}: the only one giving plausible speeds (90th pct {top:.1f} m/s)"
    )
    return track, u


def _checked(
    table: pa.Table,
    base: ColumnMapping,
    track: Track,
    ref: Reference,
    given: dict[str, Any],
    hints: dict[str, str],
    force: bool,
    lines: list[str],
) -> ColumnMapping:
    """The mapping with each optional column's unit decided, or the column dropped."""
    mapping = base

    def stated(*names: str) -> dict[str, str]:
        return {n: str(given[n]) for n in names if n in given}

    def raw(column: str) -> np.ndarray:
        return col.without_unknown_markers(col.numeric(table, column))[track.fix]

    def record(v: Verdict, label: str) -> None:
        nonlocal mapping
        if v.used:
            mapping = replace(mapping, **v.fields)
            lines.append(
                f"  {label:<9} column {v.column!r}  {' '.join(v.fields.values())}  ({v.how})"
            )
        else:
            mapping = replace(mapping, **{label.replace(" ", "_"): None})  # type: ignore[arg-type]
            lines.append(f"  {label:<9} column {v.column!r}  {v.how}")

    if mapping.speed:
        hint = {"speed_unit": hints["speed"]} if "speed" in hints else {}
        record(
            check_speed(raw(mapping.speed), ref, mapping.speed, stated("speed_unit"), hint, force),
            "speed",
        )
    course = ref.course
    if mapping.heading:
        hint = {"heading_unit": hints["heading"]} if "heading" in hints else {}
        v = check_heading(
            raw(mapping.heading), ref, mapping.heading,
            stated("heading_unit", "heading_convention"), hint, force,
        )  # fmt: skip
        record(v, "heading")
        if v.used:
            h = heading_to_enu(
                raw(mapping.heading), mapping.heading_unit, mapping.heading_convention
            )
            agree = np.abs(np.angle(np.exp(1j * (h - ref.course)))) <= np.radians(20)
            course = np.where(agree, h, ref.course)  # the column's outliers out
    if mapping.yaw_rate:
        values = col.numeric(table, mapping.yaw_rate)
        use = track.timed & np.isfinite(values)
        samples = samples_by_vehicle(track.vid, track.sample_ns, values, use)
        hint = {"yaw_rate_unit": hints["yaw_rate"]} if "yaw_rate" in hints else {}
        v = check_yaw_rate(
            turns(ref, course, samples), mapping.yaw_rate,
            stated("yaw_rate_unit", "yaw_rate_sign"), hint, force,
        )  # fmt: skip
        record(v, "yaw rate")
    for q in ("speed", "heading", "yaw_rate"):
        if getattr(mapping, q) is None:
            lines.append(f"  {q.replace('_', ' '):<9} derived from positions")
    return mapping


def import_file(
    source: str | Path, given: dict[str, Any], options: ImportOptions, *, force: bool = False
) -> tuple[pa.Table, ImportReport, list[str], ColumnMapping]:
    """Read, plan and import a log: the log, the report, the decisions block, the mapping."""
    table = read_source(source)
    p = plan(table, str(source), given, options, force=force)
    out, report = build(table, p.track, p.mapping, p.options)
    lines = [f"import-log {Path(source).name}: {table.num_rows} rows, {table.num_columns} columns"]
    lines += p.lines
    lines += _rate_lines(out, p, report)
    return out, report, lines, p.mapping


def _rate_lines(out: pa.Table, p: Plan, report: ImportReport) -> list[str]:
    t = p.track.t_ns[p.track.fix]
    steps = np.diff(t)[np.diff(t) > 0]
    fix_dt = float(np.median(steps)) / 1e9 if steps.size else float("nan")
    lines = [f"  GNSS      {report.fixes} fixes, median {fix_dt:.3f} s apart ({1 / fix_dt:.1f} Hz)"]
    frames = out["t_event_ns"].to_numpy()
    d = np.diff(frames)
    frame_dt = float(np.median(d[d > 0])) / 1e9 if (d > 0).any() else float("nan")
    how = report.resampled or "one frame per fix (--rate-hz 0)"
    lines.append(f"  output    {out.num_rows} frames, median {frame_dt:.3f} s apart: {how}")
    limit = InputSpec().max_gap_s
    if frame_dt > limit:
        lines.append(
            f"  WARNING   frames are {frame_dt:.2f} s apart, more than the model's "
            f"{limit:g} s window gap: it cannot learn from this log; use --rate-hz 10"
        )
    return lines
