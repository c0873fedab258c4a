"""Import foreign vehicle logs (CSV/Parquet, own columns and units) as canonical sensor logs.

Pipeline: map and convert units -> drop unusable rows -> sort per vehicle -> drop repeated
timestamps and repeated GNSS fixes -> local metric frame -> derive what is missing (speed,
heading, yaw rate, acceleration) from positions over a time window -> per-vehicle seq.
Every dropped row is counted under a reason in the returned :class:`ImportReport`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ingest.derive import derive_kinematics
from ingest.geo import LocalFrame
from ingest.mapping import ANGLE_UNITS, SPEED_UNITS, TIME_UNITS, ColumnMapping
from schemas import sensor
from schemas.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class ImportOptions:
    """How to clean and localise an imported log."""

    vehicle_id: str | None = None
    """Vehicle id for every row when the mapping has no vehicle id column."""
    origin: tuple[float, float] | None = None
    """(lat, lon) of the local frame; default: the first fix of the log."""
    repeat_window_s: float = 1.0
    """A fix identical to the previous one is kept only this long after the last kept one."""
    derive_window_s: float = 1.0
    """Time window over which speed, heading and yaw rate are derived from positions."""

    def __post_init__(self) -> None:
        if self.repeat_window_s <= 0 or self.derive_window_s <= 0:
            raise ConfigError("repeat_window_s and derive_window_s must be > 0")
        if self.vehicle_id is not None and not self.vehicle_id:
            raise ConfigError("vehicle_id must be non-empty")


@dataclass(frozen=True, kw_only=True)
class ImportReport:
    """What an import kept, dropped (per reason) and derived."""

    rows_read: int
    rows_written: int
    vehicles: int
    dropped: dict[str, int] = field(default_factory=dict)
    derived: tuple[str, ...] = ()
    origin: tuple[float, float] | None = None

    def describe(self) -> str:
        lines = [
            f"read {self.rows_read} rows, wrote {self.rows_written} frames of "
            f"{self.vehicles} vehicle(s)"
        ]
        for reason, n in sorted(self.dropped.items(), key=lambda kv: -kv[1]):
            lines.append(f"  dropped {n:>8} {reason}")
        if self.derived:
            lines.append(f"  derived from positions: {', '.join(self.derived)}")
        if self.origin:
            lines.append(f"  local frame origin: lat {self.origin[0]:.7f} lon {self.origin[1]:.7f}")
        return "\n".join(lines)


def read_source(path: str | Path) -> pa.Table:
    """Read a CSV/TSV or Parquet file as it is."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"log file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pq.read_table(path)
        if suffix in (".csv", ".txt", ".tsv"):
            delim = "\t" if suffix == ".tsv" else ","
            return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=delim))
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    raise ConfigError(f"{path}: unknown log format {suffix!r}; use .csv, .tsv or .parquet")


def _numeric(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        col = pc.utf8_trim_whitespace(col)
        ok = pc.utf8_is_numeric(pc.replace_substring_regex(col, r"^[-+]|[.eE+-]", ""))
        col = pc.if_else(ok, col, pa.scalar(None, col.type))
    try:
        return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ConfigError(f"column {name!r} is not numeric ({col.type}): {exc}") from exc


def import_table(
    table: pa.Table, mapping: ColumnMapping, options: ImportOptions | None = None
) -> tuple[pa.Table, ImportReport]:
    """Convert a foreign table into a canonical sensor log table and a report."""
    options = options or ImportOptions()
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
    t = _numeric(table, mapping.time) * TIME_UNITS[mapping.time_unit]
    if mapping.geodetic:
        a, b = _numeric(table, mapping.lat), _numeric(table, mapping.lon)  # type: ignore[arg-type]
    else:
        a, b = _numeric(table, mapping.x), _numeric(table, mapping.y)  # type: ignore[arg-type]
    if mapping.vehicle_id is not None:
        vid = np.asarray(pc.cast(table.column(mapping.vehicle_id), pa.string()).to_pylist(), object)
    else:
        vid = np.full(n, options.vehicle_id, object)
    opt = {q: _optional(table, mapping, q) for q in ("speed", "heading", "yaw_rate", "accel")}
    quality = _numeric(table, mapping.gnss_quality) if mapping.gnss_quality else np.full(n, np.nan)

    keep = np.ones(n, bool)

    def drop(mask: np.ndarray, reason: str) -> None:
        hit = mask & keep
        if hit.any():
            drops[reason] += int(hit.sum())
            keep[hit] = False

    drop(~np.isfinite(t), "missing_time")
    drop(np.asarray([v is None or v == "" for v in vid]), "missing_vehicle_id")
    drop(~(np.isfinite(a) & np.isfinite(b)), "missing_position")
    if mapping.geodetic:
        bad = (np.abs(a) > 90) | (np.abs(b) > 180) | ((a == 0) & (b == 0))
        drop(bad, "invalid_position (out of range or 0,0 no-fix marker)")
    drop(t < 0, "negative_time")
    t_ns = np.where(keep, t, 0).round().astype(np.int64)

    idx = np.flatnonzero(keep)
    idx = idx[np.lexsort((t_ns[idx], vid[idx].astype(str)))]  # stable: first row wins ties
    same_vid = np.r_[False, vid[idx][1:] == vid[idx][:-1]]
    dup_t = same_vid & np.r_[False, t_ns[idx][1:] == t_ns[idx][:-1]]
    drop(np.isin(np.arange(n), idx[dup_t]), "duplicate_timestamp")
    idx = idx[~dup_t]
    drop(np.isin(np.arange(n), idx[_repeated_fixes(idx, vid, t_ns, a, b, options)]), "repeated_fix")
    idx = idx[keep[idx]]
    if len(idx) == 0:
        raise ConfigError(f"no usable rows in the log (dropped: {dict(drops)})")

    origin = None
    if mapping.geodetic:
        first = idx[np.argmin(t_ns[idx])]
        origin = options.origin or (float(a[first]), float(b[first]))
        x, y = LocalFrame(lat0=origin[0], lon0=origin[1]).to_local(a[idx], b[idx])
        lat, lon = a[idx], b[idx]
    else:
        x, y, lat, lon = a[idx], b[idx], np.full(len(idx), np.nan), np.full(len(idx), np.nan)
    cols = {q: (v[idx] if v is not None else None) for q, v in opt.items()}
    kin, derived = derive_kinematics(vid[idx], t_ns[idx], x, y, cols, options.derive_window_s)
    out = {"x": x, "y": y, **kin}
    bounds = {
        "x": sensor.MAX_ABS_POSITION_M,
        "y": sensor.MAX_ABS_POSITION_M,
        "speed": sensor.MAX_SPEED_MS,
        "yaw_rate": sensor.MAX_ABS_YAW_RATE,
        "accel": sensor.MAX_ABS_ACCEL,
    }
    ok = np.ones(len(idx), bool)
    for name, bound in bounds.items():
        bad = ok & ~(np.abs(out[name]) <= bound)
        if name == "speed":
            bad |= ok & (out[name] < 0)
        if bad.any():
            drops[f"implausible_{name}"] += int(bad.sum())
            ok &= ~bad
    sel = idx[ok]
    v_out = vid[sel]
    order = np.lexsort((v_out.astype(str), t_ns[sel]))
    seq = _seq(v_out)
    q = quality[sel]
    table_out = pa.table(
        {
            "vehicle_id": v_out[order],
            "seq": seq[order],
            "t_event_ns": t_ns[sel][order],
            **{k: out[k][ok][order] for k in ("x", "y", "speed", "heading", "yaw_rate", "accel")},
            "lat": pa.array(lat[ok][order], mask=~np.isfinite(lat[ok][order])),
            "lon": pa.array(lon[ok][order], mask=~np.isfinite(lon[ok][order])),
            "gnss_quality": pa.array(
                np.nan_to_num(q[order]).astype(np.int8), mask=~np.isfinite(q[order])
            ),
        },
        schema=sensor.ARROW_SCHEMA,
    )
    report = ImportReport(
        rows_read=n,
        rows_written=table_out.num_rows,
        vehicles=len(set(v_out)),
        dropped=dict(drops),
        derived=derived,
        origin=origin,
    )
    return table_out, report


def _optional(table: pa.Table, m: ColumnMapping, quantity: str) -> np.ndarray | None:
    """An optional column in our units and conventions, or None if unmapped."""
    name = getattr(m, quantity)
    if name is None:
        return None
    v = _numeric(table, name)
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
