"""Import with no flags: column aliases, units and conventions decided and checked from the
data, IMU rows between fixes, 1 Hz GNSS resampled to 10 Hz, and the two real dev logs.

Synthetic logs come from :func:`drive`: a vehicle on a winding road (speed 8-16 m/s, yaw
rate swinging +-0.25 rad/s), written in whichever units and conventions a test asks for.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from ingest import columns
from ingest.auto import import_file, plan
from ingest.cli import main
from ingest.geo import LocalFrame
from ingest.importer import NO_POSITION, ImportOptions
from ingest.mapping import SPEED_UNITS, given_fields
from ingest.source import read_source
from schemas.errors import ConfigError
from tests.real_logs import MISSING, REAL

ORIGIN = (48.1372, 11.5755)


def truth(t: np.ndarray) -> dict[str, np.ndarray]:
    """The winding road: exact x, y, speed, ENU heading and CCW yaw rate at times ``t``."""
    fine = np.arange(0.0, t.max() + 0.01, 0.001)
    speed = 12 + 4 * np.sin(fine / 7)
    yaw = 0.25 * np.sin(fine / 3)
    heading = 0.3 + np.cumsum(yaw) * 0.001
    x = np.cumsum(speed * np.cos(heading)) * 0.001
    y = np.cumsum(speed * np.sin(heading)) * 0.001
    return {k: np.interp(t, fine, v) for k, v in dict(
        x=x, y=y, speed=speed, heading=heading, yaw=yaw).items()}  # fmt: skip


def drive(
    *,
    gnss_hz: float = 10.0,
    seconds: float = 60.0,
    speed_unit: str = "m/s",
    heading: tuple[str, str] = ("deg", "compass"),
    yaw: tuple[str, str] | None = ("deg/s", "ccw"),
    imu_hz: float | None = None,
    standing: bool = False,
) -> pa.Table:
    """A log of the winding road; with ``imu_hz``, IMU-only rows between the fixes."""
    t_fix = np.arange(0.0, seconds, 1 / gnss_hz)
    t = np.union1d(t_fix, np.arange(0.0, seconds, 1 / imu_hz)) if imu_hz else t_fix
    tr = truth(t)
    if standing:
        tr.update(x=np.zeros_like(t), y=np.zeros_like(t), speed=np.zeros_like(t))
    lat, lon = LocalFrame(lat0=ORIGIN[0], lon0=ORIGIN[1]).to_geodetic(tr["x"], tr["y"])
    fix = np.isin(t, t_fix)
    h = tr["heading"] if heading[1] == "enu" else math.pi / 2 - tr["heading"]
    h = np.mod(h, 2 * math.pi) if heading[1] == "compass" else np.angle(np.exp(1j * h))
    cols: dict[str, Any] = {
        "timestamp": 1.7e9 + t,
        "Latitude": np.where(fix, lat, np.nan),
        "Longitude": np.where(fix, lon, np.nan),
        "speed": np.where(fix, tr["speed"] / SPEED_UNITS[speed_unit], np.nan),
        "course": np.where(fix, np.degrees(h) if heading[0] == "deg" else h, np.nan),
    }
    if yaw is not None:
        rate = tr["yaw"] * (-1 if yaw[1] == "cw" else 1)
        cols["gyro_z"] = np.degrees(rate) if yaw[0] == "deg/s" else rate
    return pa.table({k: pa.array(v, mask=~np.isfinite(v)) for k, v in cols.items()})


def planned(table: pa.Table, force: bool = False, **flags: Any) -> Any:
    return plan(table, "road.csv", given_fields(**flags), ImportOptions(), force=force).mapping


@pytest.mark.parametrize(
    ("header", "quantity", "hint"),
    [
        ("lat", "lat", None),
        ("Latitude", "lat", None),
        ("locationLatitude", "lat", None),
        ("lat_deg", "lat", "deg"),
        (" LAT ", "lat", None),
        ("lng", "lon", None),
        ("long", "lon", None),
        ("Longitude", "lon", None),
        ("lon_deg", "lon", "deg"),
        ("locationLongitude", "lon", None),
        ("t", "time", None),
        ("t_s", "time", "s"),
        ("Time [ms]", "time", "ms"),
        ("millis", "time", "ms"),
        ("utc_ms", "time", "ms"),
        ("locationTimestamp_since1970", "time", "s"),
        ("t_event_ns", "time", "ns"),
        ("speed_kmh", "speed", "km/h"),
        ("Speed (mph)", "speed", "mph"),
        ("speed_mps", "speed", "m/s"),
        ("velocity", "speed", None),
        ("locationSpeed", "speed", None),
        ("bearing", "heading", None),
        ("course_deg", "heading", "deg"),
        ("Heading-Rad", "heading", "rad"),
        ("locationCourse", "heading", None),
        ("yawrate", "yaw_rate", None),
        ("yaw_rate_dps", "yaw_rate", "deg/s"),
        ("gyro_z", "yaw_rate", None),
        ("gyroRotationZ", "yaw_rate", None),
        ("vehicle_id", "vehicle_id", None),
        ("Device", "vehicle_id", None),
        ("x_m", "x", "m"),
        ("north", "y", None),
    ],
)
def test_header_spellings_are_recognised(header: str, quantity: str, hint: str | None) -> None:
    m = columns.match(quantity, header)
    assert m is not None and m.unit_hint == hint


@pytest.mark.parametrize("header", ["deviceOrientation", "gyroRotationX", "latency", "speedup"])
def test_similar_names_are_not_mistaken(header: str) -> None:
    assert all(columns.match(q, header) is None for q in columns.ALIASES)


@pytest.mark.parametrize("unit", list(SPEED_UNITS))
def test_speed_unit_is_decided_from_the_track(unit: str) -> None:
    assert planned(drive(speed_unit=unit)).speed_unit == unit


@pytest.mark.parametrize("unit", ["deg", "rad"])
@pytest.mark.parametrize("convention", ["compass", "enu"])
def test_heading_convention_is_decided_from_the_course(unit: str, convention: str) -> None:
    m = planned(drive(heading=(unit, convention)))
    assert (m.heading_unit, m.heading_convention) == (unit, convention)


@pytest.mark.parametrize("unit", ["deg/s", "rad/s"])
@pytest.mark.parametrize("sign", ["ccw", "cw"])
def test_yaw_rate_unit_and_sign_are_decided_from_the_course_change(unit: str, sign: str) -> None:
    m = planned(drive(yaw=(unit, sign), imu_hz=50))
    assert (m.yaw_rate_unit, m.yaw_rate_sign) == (unit, sign)


def test_imported_frames_carry_our_units_whatever_the_log_used(tmp_path: Path) -> None:
    path = tmp_path / "road.parquet"
    pq.write_table(drive(speed_unit="mph", heading=("rad", "enu"), yaw=("deg/s", "cw")), path)
    table, _, _, _ = import_file(path, {}, ImportOptions())
    t = (table["t_event_ns"].to_numpy() - 1.7e18) / 1e9
    tr = truth(t)
    assert np.abs(table["speed"].to_numpy() - tr["speed"]).max() < 0.05
    dh = np.angle(np.exp(1j * (table["heading"].to_numpy() - tr["heading"])))
    assert np.abs(dh).max() < 0.01
    assert np.abs(table["yaw_rate"].to_numpy() - tr["yaw"]).max() < 0.01  # CCW, rad/s


def test_standing_vehicle_is_ambiguous_and_says_which_flag_decides() -> None:
    with pytest.raises(ConfigError, match=r"speed column 'speed': too little motion.*--map-speed"):
        planned(drive(standing=True))
    # Stating the units settles it (nothing to check them against).
    m = planned(
        drive(standing=True, yaw=None),
        speed_unit="km/h", heading_unit="deg", heading_convention="compass",
    )  # fmt: skip
    assert m.speed_unit == "km/h"


def test_a_flag_the_data_contradicts_stops_unless_forced() -> None:
    table = drive(speed_unit="km/h")
    with pytest.raises(ConfigError, match=r"--map-speed-unit m/s contradicts the data: km/h fits"):
        planned(table, speed_unit="m/s")
    assert planned(table, force=True, speed_unit="m/s").speed_unit == "m/s"
    assert planned(table, speed_unit="km/h").speed_unit == "km/h"  # confirmed


def test_mph_and_knots_that_fit_equally_stop_with_both_flags() -> None:
    table = drive(speed_unit="mph")
    between = pc_mul(table, "speed", math.sqrt(SPEED_UNITS["mph"] / SPEED_UNITS["knots"]))
    with pytest.raises(ConfigError, match=r"about equally.*--map-speed-unit mph or"):
        planned(between)


def pc_mul(table: pa.Table, name: str, factor: float) -> pa.Table:
    i = table.column_names.index(name)
    values = table.column(name).to_numpy(zero_copy_only=False) * factor
    return table.set_column(i, name, pa.array(values, mask=~np.isfinite(values)))


def test_a_yaw_rate_that_does_not_follow_the_course_is_replaced_by_the_derived_one() -> None:
    table = drive(imu_hz=50)
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 5, table.num_rows)
    i = table.column_names.index("gyro_z")
    table = table.set_column(i, "gyro_z", pa.array(noise))
    p = plan(table, "road.csv", {}, ImportOptions())
    assert p.mapping.yaw_rate is None
    assert any("not used" in line and "gyro_z" in line for line in p.lines)


def test_imu_rows_are_counted_apart_and_their_yaw_rate_is_averaged(tmp_path: Path) -> None:
    path = tmp_path / "phone.csv"
    table = drive(gnss_hz=1, imu_hz=50, yaw=("rad/s", "ccw"))
    pacsv.write_csv(table, path)
    out, report, _, _ = import_file(path, {}, ImportOptions())
    assert report.dropped == {}
    assert report.imu_rows == {NO_POSITION: table.num_rows - 60}
    assert report.fixes == 60
    t = (out["t_event_ns"].to_numpy() - 1.7e18) / 1e9
    assert np.abs(out["yaw_rate"].to_numpy() - truth(t)["yaw"]).max() < 0.01


def test_one_hz_gnss_yields_ten_hz_frames_on_the_true_curve(tmp_path: Path) -> None:
    path = tmp_path / "slow.csv"
    pacsv.write_csv(drive(gnss_hz=1, yaw=None), path)
    out, report, _, _ = import_file(path, {}, ImportOptions())
    t_ns = out["t_event_ns"].to_numpy()
    assert set(np.diff(t_ns)) == {100_000_000} and report.rows_written == 591
    tr = truth((t_ns - 1.7e18) / 1e9)
    err = np.hypot(out["x"].to_numpy() - tr["x"], out["y"].to_numpy() - tr["y"])
    assert err.max() < 0.05  # a polyline between 1 Hz fixes would be off by ~0.4 m
    assert np.abs(out["speed"].to_numpy() - tr["speed"]).max() < 0.1
    assert np.abs(out["yaw_rate"].to_numpy()[10:-10] - tr["yaw"][10:-10]).max() < 0.02


def test_fixes_too_far_apart_leave_a_gap_and_rate_zero_keeps_fixes(tmp_path: Path) -> None:
    table = drive(gnss_hz=1, yaw=None)
    keep = np.ones(table.num_rows, bool)
    keep[20:25] = False  # a 6 s GNSS outage
    path = tmp_path / "gap.parquet"
    pq.write_table(table.filter(pa.array(keep)), path)
    out, report, _, _ = import_file(path, {}, ImportOptions())
    steps = np.diff(out["t_event_ns"].to_numpy())
    assert steps.max() == 6_000_000_000 and "1 gap(s)" in report.resampled
    out0, _, lines, _ = import_file(path, {}, ImportOptions(rate_hz=0))
    assert out0.num_rows == 55 and any("WARNING" in line for line in lines)


@pytest.mark.parametrize(
    ("values", "unit"),
    [
        (1.7e9 + np.arange(50) * 0.1, "s"),
        (1.7e12 + np.arange(50) * 100.0, "ms"),
        (1.7e15 + np.arange(50) * 1e5, "us"),
        (1.7e18 + np.arange(50) * 1e8, "ns"),
        (np.arange(50) * 0.02, "s"),
        (np.arange(50) * 20.0, "ms"),
        (74858200 + np.arange(50) * 100.0 + (np.arange(50) >= 18) * 40_000, "hhmmssmmm"),
    ],
)
def test_time_unit_is_decided_from_magnitude_and_spacing(values: np.ndarray, unit: str) -> None:
    assert columns.time_units_from_data(values)[0] == [unit]


def test_iso_strings_and_delimiters_are_sniffed(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    lines = ["Time;lat;lon"] + [
        f"2016-08-09T13:09:{i:02d}.5Z;48,{1372 + i:04d};11,5755" for i in range(30)
    ]
    path.write_text("\n".join(lines) + "\n")
    out, _, printed, _ = import_file(path, {}, ImportOptions(rate_hz=0))
    assert out.num_rows == 30 and out["vehicle_id"][0].as_py() == "log"  # file name stem
    assert any("ISO-8601" in line for line in printed)
    t = out["t_event_ns"].to_numpy()
    assert (np.diff(t) == 1_000_000_000).all()


def test_command_prints_the_decisions_to_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "road.tsv"
    pacsv.write_csv(drive(speed_unit="km/h"), path, pacsv.WriteOptions(delimiter="\t"))
    assert main(["import-log", str(path), "--out", str(tmp_path / "o.parquet")]) == 0
    err = capsys.readouterr().err
    assert "speed     column 'speed'  km/h  (median ratio to GNSS-derived speed 1.00" in err
    assert main(
        ["import-log", str(path), "--out", str(tmp_path / "o.parquet"), "--map-speed-unit", "mph"]
    ) == 2  # fmt: skip
    assert "contradicts the data" in capsys.readouterr().err


needs_real = pytest.mark.skipif(REAL is None, reason=MISSING)


@needs_real
def test_real_datalogger_imports_with_no_flags() -> None:
    out, report, _, m = import_file(REAL / "datalogger_car_2014-02-14.csv", {}, ImportOptions())
    assert (m.time, m.time_unit, m.row_time) == ("time", "hhmmssmmm", "millis")
    assert (m.speed, m.speed_unit) == ("speed", "km/h")
    assert (m.heading_unit, m.heading_convention) == ("deg", "compass")
    assert (m.yaw_rate, m.yaw_rate_unit, m.yaw_rate_sign) == ("yawrate", "deg/s", "ccw")
    assert report.dropped.get("repeated_fix") is None and report.fixes >= 295
    steps = np.diff(out["t_event_ns"].to_numpy())
    assert (steps == 100_000_000).all() and out.num_rows >= 295
    assert 14 < float(np.median(out["speed"].to_numpy())) < 15.5  # ~53 km/h


@needs_real
def test_real_sensorlog_imports_with_no_flags_at_ten_hz() -> None:
    out, report, _, m = import_file(
        REAL / "sensorlog_motorbike_2016-08-09.csv", {}, ImportOptions()
    )
    assert (m.time, m.row_time) == ("locationTimestamp_since1970", "loggingTime")
    assert (m.speed, m.speed_unit) == ("locationSpeed", "m/s")
    assert (m.heading, m.heading_unit, m.heading_convention) == ("locationCourse", "deg", "compass")
    assert report.fixes >= 100 and report.imu_rows[NO_POSITION] == 5273
    assert not report.dropped
    steps = np.diff(out["t_event_ns"].to_numpy())
    assert (steps == 100_000_000).all() and out.num_rows >= 1000
    assert read_source(REAL / "sensorlog_motorbike_2016-08-09.csv").num_rows == 5380
