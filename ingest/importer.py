"""Import foreign vehicle logs (CSV/Parquet, own columns and units) as canonical sensor logs.

Pipeline: map and convert units -> set aside IMU rows (no GNSS position, or one that
repeats the last fix) -> drop unusable rows -> sort per vehicle -> drop repeated timestamps
-> local metric frame -> derive what is missing (speed, heading) from positions over a time
window -> put fixes onto the output frame rate (``resample``), averaging the IMU yaw rate
and acceleration of every row per frame -> derive yaw rate and acceleration where no
column gave them -> per-vehicle seq. Every dropped row is counted under a reason in the
returned :class:`ImportReport`; IMU rows are counted apart, they are not errors.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingest.columns import numeric, time_ns, without_unknown_markers
from ingest.derive import blank_outliers, derive_kinematics
from ingest.geo import LocalFrame
from ingest.mapping import ANGLE_UNITS, SPEED_UNITS, ColumnMapping
from ingest.resample import Samples, hermite, per_frame, samples_by_vehicle
from ingest.source import read_source
from schemas import sensor
from schemas.errors import ConfigError

__all__ = ["ImportOptions", "ImportReport", "Track", "import_log", "import_table", "read_source"]

_BOUNDS = {
    "speed": sensor.MAX_SPEED_MS,
    "yaw_rate": sensor.MAX_ABS_YAW_RATE,
    "accel": sensor.MAX_ABS_ACCEL,
}


@dataclass(frozen=True, kw_only=True)
class ImportOptions:
    """How to clean, localise and resample an imported log."""

    vehicle_id: str | None = None
    """Vehicle id for every row when the mapping has no vehicle id column."""
    origin: tuple[float, float] | None = None
    """(lat, lon) of the local frame; default: the first fix of the log."""
    repeat_window_s: float = 1.0
    """A fix identical to the previous one is kept only this long after the last kept one."""
    derive_window_s: float = 1.0
    """Time window over which speed, heading and yaw rate are derived from positions
    (widened to 2.5 fix intervals for logs with slower GNSS)."""
    rate_hz: float = 10.0
    """Output frame rate: fixes are interpolated onto this grid; 0 keeps one frame per fix."""
    max_fix_gap_s: float = 2.0
    """No frames are interpolated between fixes further apart: the log has a gap there."""

    def __post_init__(self) -> None:
        if self.repeat_window_s <= 0 or self.derive_window_s <= 0:
            raise ConfigError("repeat_window_s and derive_window_s must be > 0")
        if self.vehicle_id is not None and not self.vehicle_id:
            raise ConfigError("vehicle_id must be non-empty")
        if self.rate_hz < 0 or self.rate_hz > 1000:
            raise ConfigError(f"rate_hz must be 0 (keep fixes) or up to 1000, got {self.rate_hz}")
        if self.max_fix_gap_s <= 0:
            raise ConfigError(f"max_fix_gap_s must be > 0, got {self.max_fix_gap_s}")


@dataclass(frozen=True, kw_only=True)
class ImportReport:
    """What an import kept, set aside as IMU rows, dropped (per reason) and derived."""

    rows_read: int
    rows_written: int
    vehicles: int
    dropped: dict[str, int] = field(default_factory=dict)
    derived: tuple[str, ...] = ()
    origin: tuple[float, float] | None = None
    fixes: int = 0
    """GNSS fixes used (rows with a new position)."""
    imu_rows: dict[str, int] = field(default_factory=dict)
    """Rows without a new fix, per kind; their yaw rate and acceleration are still used."""
    resampled: str = ""
    """How fixes became frames, '' when each fix is one frame."""
    replaced: dict[str, int] = field(default_factory=dict)
    """Given values far from the GNSS track, derived from positions instead."""

    def describe(self) -> str:
        lines = [
            f"read {self.rows_read} rows, wrote {self.rows_written} frames of "
            f"{self.vehicles} vehicle(s) from {self.fixes} GNSS fixes"
        ]
        for kind, n in sorted(self.imu_rows.items(), key=lambda kv: -kv[1]):
            lines.append(f"  imu rows {n:>7} {kind}")
        for reason, n in sorted(self.dropped.items(), key=lambda kv: -kv[1]):
            lines.append(f"  dropped {n:>8} {reason}")
        for q, n in self.replaced.items():
            lines.append(f"  replaced {n:>7} {q} values far from the GNSS track (derived instead)")
        if self.resampled:
            lines.append(f"  resampled: {self.resampled}")
        if self.derived:
            lines.append(f"  derived from positions: {', '.join(self.derived)}")
        if self.origin:
            lines.append(f"  local frame origin: lat {self.origin[0]:.7f} lon {self.origin[1]:.7f}")
        return "\n".join(lines)


#: ``ImportReport.imu_rows`` kinds.
NO_POSITION = "without a GNSS position (IMU only)"
REPEATED_FIX = "repeating the last fix"


@dataclass(frozen=True, kw_only=True, eq=False)
class Track:
    """A log's GNSS fixes in the local frame, and the time and vehicle of every source row."""

    rows_read: int
    t_ns: np.ndarray
    """Per source row, the fix time: int64 ns (0 where missing)."""
    sample_ns: np.ndarray
    """Per source row, the time of its IMU samples (0 where ``timed`` is False)."""
    timed: np.ndarray
    """Per source row: it has a time and a vehicle, so its IMU samples can be used."""
    vid: np.ndarray
    fix: np.ndarray
    """Source-row indices of the fixes, sorted by vehicle then time."""
    x: np.ndarray
    y: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    origin: tuple[float, float] | None
    drops: dict[str, int]
    imu_rows: dict[str, int]


def locate(table: pa.Table, mapping: ColumnMapping, options: ImportOptions) -> Track:
    """Find a log's usable GNSS fixes, set aside its IMU rows and count the bad ones."""
    missing = [c for c in mapping.columns().values() if c not in table.column_names]
    if missing:
        raise ConfigError(
            f"columns {missing} not in the log (it has {table.column_names}); "
            "fix the mapping (--preset, --mapping or --map-* flags)"
        )
    if mapping.vehicle_id is None and options.vehicle_id is None:
        raise ConfigError("the mapping has no vehicle id column: pass --vehicle-id")
    n = table.num_rows
    drops: Counter[str] = Counter()
    t, t_sample = _time(table, mapping)
    if mapping.geodetic:
        a, b = numeric(table, mapping.lat), numeric(table, mapping.lon)  # type: ignore[arg-type]
    else:
        a, b = numeric(table, mapping.x), numeric(table, mapping.y)  # type: ignore[arg-type]
    if mapping.vehicle_id is not None:
        vid = np.asarray(pc.cast(table.column(mapping.vehicle_id), pa.string()).to_pylist(), object)
    else:
        vid = np.full(n, options.vehicle_id, object)
    no_vid = np.asarray([v is None or v == "" for v in vid])
    timed = np.isfinite(t_sample) & (t_sample >= 0) & ~no_vid
    no_position = ~np.isfinite(a) & ~np.isfinite(b)
    keep = ~no_position

    def drop(mask: np.ndarray, reason: str) -> None:
        hit = mask & keep
        if hit.any():
            drops[reason] += int(hit.sum())
            keep[hit] = False

    drop(~np.isfinite(t), "missing_time")
    drop(no_vid, "missing_vehicle_id")
    drop(~(np.isfinite(a) & np.isfinite(b)), "missing_position")
    if mapping.geodetic:
        bad = (np.abs(a) > 90) | (np.abs(b) > 180) | ((a == 0) & (b == 0))
        drop(bad, "invalid_position (out of range or 0,0 no-fix marker)")
    drop(t < 0, "negative_time")
    t_ns = np.where(np.isfinite(t) & (t >= 0), t, 0).round().astype(np.int64)
    sample_ns = np.where(timed, t_sample, 0).round().astype(np.int64)

    idx = np.flatnonzero(keep)
    idx = idx[np.lexsort((sample_ns[idx], t_ns[idx], vid[idx].astype(str)))]  # stable sort
    same_vid = np.r_[False, vid[idx][1:] == vid[idx][:-1]]
    twin = same_vid & np.r_[False, (t_ns[idx][1:] == t_ns[idx][:-1])]
    twin &= np.r_[False, sample_ns[idx][1:] == sample_ns[idx][:-1]]
    drop(np.isin(np.arange(n), idx[twin]), "duplicate_timestamp")
    idx = idx[~twin]
    repeated = idx[_repeated_fixes(idx, vid, t_ns, a, b, options)]
    keep[repeated] = False
    idx = idx[keep[idx]]
    same_vid = np.r_[False, vid[idx][1:] == vid[idx][:-1]]
    dup_t = same_vid & np.r_[False, t_ns[idx][1:] == t_ns[idx][:-1]]
    drop(np.isin(np.arange(n), idx[dup_t]), "duplicate_timestamp")
    idx = idx[~dup_t]
    imu = {NO_POSITION: int(no_position.sum()), REPEATED_FIX: len(repeated)}
    if len(idx) == 0:
        raise ConfigError(
            f"no usable GNSS fixes in the log (dropped: {dict(drops)}, IMU rows: {imu}); "
            "check the position columns (--map-lat/--map-lon or --map-x/--map-y)"
        )
    origin = None
    if mapping.geodetic:
        first = idx[np.argmin(t_ns[idx])]
        origin = options.origin or (float(a[first]), float(b[first]))
        x, y = LocalFrame(lat0=origin[0], lon0=origin[1]).to_local(a[idx], b[idx])
        lat, lon = a[idx], b[idx]
    else:
        x, y, lat, lon = a[idx], b[idx], np.full(len(idx), np.nan), np.full(len(idx), np.nan)
    return Track(
        rows_read=n,
        t_ns=t_ns,
        sample_ns=sample_ns,
        timed=timed,
        vid=vid,
        fix=idx,
        x=x,
        y=y,
        lat=lat,
        lon=lon,
        origin=origin,
        drops=dict(drops),
        imu_rows={k: v for k, v in imu.items() if v},
    )


def _time(table: pa.Table, mapping: ColumnMapping) -> tuple[np.ndarray, np.ndarray]:
    """Fix times and sample times of each row, float ns on the ``time`` clock.

    With a ``row_time`` clock, samples are timed by it plus the offset between the two
    clocks, interpolated between the rows where a new fix time first appears (loggers'
    row clocks drift against GNSS time); rows without a fix time take that time too.
    """
    t = time_ns(table, mapping.time, mapping.time_unit)
    if mapping.row_time is None:
        return t, t
    row = time_ns(table, mapping.row_time, mapping.row_time_unit)
    finite = np.flatnonzero(np.isfinite(t))
    first = finite[np.r_[True, t[finite][1:] != t[finite][:-1]]]
    first = first[np.isfinite(row[first])]
    if len(first) == 0:
        raise ConfigError(
            f"time columns {mapping.time!r} and {mapping.row_time!r} never overlap, so they "
            "cannot be aligned; drop row_time from the mapping"
        )
    order = np.argsort(row[first], kind="stable")
    r0, offset = row[first][order], (t[first] - row[first])[order]
    shifted = row + np.interp(row, r0, offset)
    return np.where(np.isfinite(t), t, shifted), np.where(np.isfinite(shifted), shifted, t)


def import_table(
    table: pa.Table, mapping: ColumnMapping, options: ImportOptions | None = None
) -> tuple[pa.Table, ImportReport]:
    """Convert a foreign table into a canonical sensor log table and a report."""
    options = options or ImportOptions()
    return build(table, locate(table, mapping, options), mapping, options)


def build(
    table: pa.Table, track: Track, mapping: ColumnMapping, options: ImportOptions
) -> tuple[pa.Table, ImportReport]:
    """Frames from a located track: kinematics at fixes, then resampled (see module doc)."""
    drops = Counter(track.drops)
    fix, vid, t_fix = track.fix, track.vid[track.fix], track.t_ns[track.fix]
    given = {q: _optional(table, mapping, q) for q in ("speed", "heading", "yaw_rate", "accel")}
    samples = {
        q: _samples(track, v, q, drops)
        for q in ("yaw_rate", "accel")
        if (v := given[q]) is not None
    }
    at_fix = {q: (v[fix] if v is not None else None) for q, v in given.items()}
    for q, per_vehicle in samples.items():
        at_fix[q] = per_frame(per_vehicle, vid, t_fix, None)
    replaced = blank_outliers(vid, t_fix, track.x, track.y, at_fix, options.derive_window_s)
    kin, derived = derive_kinematics(vid, t_fix, track.x, track.y, at_fix, options.derive_window_s)
    ok = np.ones(len(fix), bool)
    for name, values in (("x", track.x), ("y", track.y)):
        bad = ~(np.abs(values) <= sensor.MAX_ABS_POSITION_M)
        if bad.any():
            drops[f"implausible_{name}"] += int(bad.sum())
            ok &= ~bad
    for name, bound in _BOUNDS.items():
        bad = ok & ~(np.abs(kin[name]) <= bound)
        if name == "speed":
            bad |= ok & (kin[name] < 0)
        if bad.any():
            drops[f"implausible_{name}"] += int(bad.sum())
            ok &= ~bad
    quality = numeric(table, mapping.gnss_quality) if mapping.gnss_quality else None
    cols = {
        "vid": vid[ok],
        "t_ns": t_fix[ok],
        "x": track.x[ok],
        "y": track.y[ok],
        **{k: kin[k][ok] for k in ("speed", "heading", "yaw_rate", "accel")},
        "quality": quality[fix][ok] if quality is not None else np.full(int(ok.sum()), np.nan),
    }
    resampled = ""
    if options.rate_hz > 0:
        cols, gaps = _resample(cols, samples, options)
        more = derive_kinematics(
            cols["vid"],
            cols["t_ns"],
            cols["x"],
            cols["y"],
            {"speed": cols["speed"], "heading": cols["heading"], **_given_rates(cols, samples)},
            options.derive_window_s,
        )[0]
        cols.update({k: more[k] for k in ("yaw_rate", "accel")})
        resampled = f"{options.rate_hz:g} Hz, cubic Hermite between fixes" + (
            f"; {gaps} gap(s) where fixes are over {options.max_fix_gap_s:g} s apart"
            if gaps
            else ""
        )
    if track.origin is not None:
        lat, lon = _geodetic(cols, track, options, ok)
    else:
        lat = lon = np.full(len(cols["t_ns"]), np.nan)
    table_out = _table(cols, lat, lon)
    report = ImportReport(
        rows_read=track.rows_read,
        rows_written=table_out.num_rows,
        vehicles=len(set(cols["vid"])),
        dropped=dict(drops),
        derived=derived,
        origin=track.origin,
        fixes=int(ok.sum()),
        imu_rows=track.imu_rows,
        resampled=resampled,
        replaced=replaced,
    )
    return table_out, report


def _samples(track: Track, values: np.ndarray, quantity: str, drops: Counter[str]) -> Samples:
    """The finite, plausible samples of every timed row (fix and IMU rows), per vehicle."""
    bad = track.timed & np.isfinite(values) & (np.abs(values) > _BOUNDS[quantity])
    if bad.any():
        drops[f"implausible_{quantity} (IMU samples)"] += int(bad.sum())
    use = track.timed & np.isfinite(values) & ~bad
    return samples_by_vehicle(track.vid, track.sample_ns, values, use)


def _resample(
    cols: dict[str, np.ndarray], samples: dict[str, Samples], options: ImportOptions
) -> tuple[dict[str, np.ndarray], int]:
    parts: list[dict[str, np.ndarray]] = []
    gaps = 0
    for v in dict.fromkeys(cols["vid"]):
        sel = cols["vid"] == v
        f = hermite(
            cols["t_ns"][sel],
            cols["x"][sel],
            cols["y"][sel],
            cols["speed"][sel],
            cols["heading"][sel],
            options.rate_hz,
            options.max_fix_gap_s,
        )
        gaps += f.gaps
        parts.append(
            {
                "vid": np.full(len(f.t_ns), v, object),
                "t_ns": f.t_ns,
                "x": f.x,
                "y": f.y,
                "speed": f.speed,
                "heading": f.heading,
                "quality": cols["quality"][sel][f.nearest_fix],
            }
        )
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if len(out["t_ns"]) == 0:
        raise ConfigError(
            f"no {options.rate_hz:g} Hz frames: every GNSS fix interval is longer than "
            f"max_fix_gap_s={options.max_fix_gap_s:g}; raise --max-fix-gap-s or pass --rate-hz 0"
        )
    for q, per_vehicle in samples.items():
        out[q] = per_frame(per_vehicle, out["vid"], out["t_ns"], options.rate_hz)
    return out, gaps


def _given_rates(
    cols: dict[str, np.ndarray], samples: dict[str, Samples]
) -> dict[str, np.ndarray | None]:
    return {q: (cols[q] if q in samples else None) for q in ("yaw_rate", "accel")}


def _geodetic(
    cols: dict[str, np.ndarray], track: Track, options: ImportOptions, ok: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    if options.rate_hz == 0:
        return track.lat[ok], track.lon[ok]
    assert track.origin is not None
    frame = LocalFrame(lat0=track.origin[0], lon0=track.origin[1])
    lat, lon = frame.to_geodetic(cols["x"], cols["y"])
    return np.asarray(lat, float), np.asarray(lon, float)


def _table(cols: dict[str, np.ndarray], lat: np.ndarray, lon: np.ndarray) -> pa.Table:
    v_out, t_out = cols["vid"], cols["t_ns"]
    order = np.lexsort((v_out.astype(str), t_out))
    seq = _seq(v_out)
    q = cols["quality"][order]
    return pa.table(
        {
            "vehicle_id": v_out[order],
            "seq": seq[order],
            "t_event_ns": t_out[order],
            **{k: cols[k][order] for k in ("x", "y", "speed", "heading", "yaw_rate", "accel")},
            "lat": pa.array(lat[order], mask=~np.isfinite(lat[order])),
            "lon": pa.array(lon[order], mask=~np.isfinite(lon[order])),
            "gnss_quality": pa.array(np.nan_to_num(q).astype(np.int8), mask=~np.isfinite(q)),
        },
        schema=sensor.ARROW_SCHEMA,
    )


def _optional(table: pa.Table, m: ColumnMapping, quantity: str) -> np.ndarray | None:
    """An optional column in our units and conventions, or None if unmapped."""
    name = getattr(m, quantity)
    if name is None:
        return None
    v = numeric(table, name)
    if quantity in ("speed", "heading"):
        v = without_unknown_markers(v)
    if quantity == "speed":
        return v * SPEED_UNITS[m.speed_unit]
    if quantity == "heading":
        v = v * ANGLE_UNITS[m.heading_unit]
        if m.heading_convention == "compass":  # clockwise from north -> CCW from east
            v = np.pi / 2 - v
        return (v + np.pi) % (2 * np.pi) - np.pi
    if quantity == "yaw_rate":
        v = v * ANGLE_UNITS[m.yaw_rate_unit.removesuffix("/s")]
        return -v if m.yaw_rate_sign == "cw" else v
    return v


def _repeated_fixes(
    idx: np.ndarray,
    vid: np.ndarray,
    t_ns: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    options: ImportOptions,
) -> np.ndarray:
    """Mask over ``idx``: a fix equal to the previous row's, within the repeat window.

    Loggers often repeat the last fix at their own row rate; a standing vehicle whose
    receiver holds its position still gets one fix per window, so it does not vanish.
    """
    va, vb, vv = a[idx], b[idx], vid[idx]
    new_run = np.r_[True, (va[1:] != va[:-1]) | (vb[1:] != vb[:-1]) | (vv[1:] != vv[:-1])]
    run = np.cumsum(new_run) - 1
    t_run0 = t_ns[idx][new_run][run]
    bucket = (t_ns[idx] - t_run0) // int(options.repeat_window_s * 1e9)
    first_in_bucket = np.r_[True, (run[1:] != run[:-1]) | (bucket[1:] != bucket[:-1])]
    return ~first_in_bucket


def _seq(vid: np.ndarray) -> np.ndarray:
    """0, 1, 2... per vehicle in the given (time-sorted per vehicle) order."""
    seq = np.zeros(len(vid), np.int64)
    for v in set(vid):
        sel = vid == v
        seq[sel] = np.arange(int(sel.sum()))
    return seq


def import_log(
    source: str | Path, mapping: ColumnMapping, options: ImportOptions | None = None
) -> tuple[pa.Table, ImportReport]:
    """Read ``source`` and import it; see :func:`import_table`."""
    return import_table(read_source(source), mapping, options)
