"""Log import: presets, units and conventions, quirks of real loggers, derived kinematics.

The sample files in tests/data were written for these tests:
- datalogger.csv: 50 Hz rows repeating each 10 Hz GNSS fix five times; 10 m/s east as
  36 km/h and compass course 90 deg, then a left turn at 10 deg/s logged
  counter-clockwise-positive (as the real datalogger does);
  one 0,0 no-fix row, one empty latitude, one duplicated row, two rows out of order.
- gnss_log.csv: 10 Hz, epoch seconds, 5 m/s north (bearing 0), a 5 s standstill where the
  receiver holds its position, empty speed for 0.5 s and empty bearing while standing,
  one NaN latitude; no vehicle id column.
- xy_fleet.csv: two vehicles interleaved and shuffled, microseconds, x/y metres only:
  "a" drives east at 12 m/s, "b" circles counter-clockwise at 8 m/s, 0.2 rad/s.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest.cli import main
from ingest.geo import LocalFrame
from ingest.importer import REPEATED_FIX, ImportOptions, import_log, import_table
from ingest.logs import read_log
from ingest.mapping import ColumnMapping, load_mapping
from ingest.simulator import SimConfig, simulate
from schemas.errors import ConfigError
from schemas.sensor import ARROW_SCHEMA, table_to_frames

DATA = Path(__file__).parent.parent / "data"


def _col(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table[name].to_pylist(), dtype=float)


def test_datalogger_preset_converts_units_and_drops_logger_quirks() -> None:
    table, report = import_log(
        DATA / "datalogger.csv", load_mapping("datalogger"), ImportOptions(vehicle_id="dl-1")
    )
    assert table.schema.equals(ARROW_SCHEMA)
    assert report.rows_read == 201 and report.rows_written == table.num_rows == 40
    assert report.dropped == {
        "missing_position": 1,
        "invalid_position (out of range or 0,0 no-fix marker)": 1,
        "duplicate_timestamp": 1,
    }
    assert report.imu_rows == {REPEATED_FIX: 158}  # not errors: IMU samples between fixes
    assert report.derived == ("accel",)
    t = table["t_event_ns"].to_numpy()
    assert t[0] == 1_000 * 1_000_000 and (np.diff(t) > 0).all()
    assert table["seq"].to_pylist() == list(range(40))
    speed, heading, yaw = _col(table, "speed"), _col(table, "heading"), _col(table, "yaw_rate")
    assert np.allclose(speed, 10.0)  # 36 km/h
    assert heading[0] == pytest.approx(0.0, abs=1e-9)  # compass 90 deg = east = 0 rad ENU
    assert yaw[-1] == pytest.approx(math.radians(10))  # left turn, CCW positive
    assert heading[-1] > 0.3  # turned left (counter-clockwise)
    x = _col(table, "x")
    assert x[10] == pytest.approx(10.0, abs=0.05)  # 1 s at 10 m/s, metres from the first fix
    for frame in table_to_frames(table):
        frame.validate()


def test_gnss_preset_keeps_standstill_at_one_fix_per_window_and_fills_gaps() -> None:
    table, report = import_log(
        DATA / "gnss_log.csv", load_mapping("gnss"), ImportOptions(vehicle_id="phone", rate_hz=0)
    )
    assert report.dropped == {"missing_position": 1}
    assert report.imu_rows == {REPEATED_FIX: 44}
    assert set(report.derived) == {"speed", "heading", "yaw_rate", "accel"}  # some cells empty
    assert set(table["vehicle_id"].to_pylist()) == {"phone"}
    t_s = (table["t_event_ns"].to_numpy() - 1_700_000_000 * 10**9) / 1e9
    standing = t_s[(t_s > 2.85) & (t_s < 8.05)]
    assert np.allclose(standing, [2.9, 3.9, 4.9, 5.9, 6.9, 7.9, 8.0], atol=1e-3)
    speed = _col(table, "speed")
    assert np.allclose(speed[10:15], 5.0, atol=0.05)  # empty cells derived from positions
    heading = _col(table, "heading")
    assert np.allclose(heading, math.pi / 2, atol=0.02)  # north, standing keeps heading
    lat = _col(table, "lat")
    assert lat[0] == pytest.approx(52.52)


def test_xy_fleet_with_vehicle_column_derives_everything() -> None:
    mapping = load_mapping(
        time="t_us", time_unit="us", x="east_m", y="north_m", vehicle_id="vehicle"
    )
    assert mapping.lat is None and not mapping.geodetic
    table, report = import_log(DATA / "xy_fleet.csv", mapping, ImportOptions(rate_hz=0))
    assert report.rows_written == 120 and report.dropped == {} and report.vehicles == 2
    assert report.origin is None
    assert table["lat"].null_count == table.num_rows
    vid = np.array(table["vehicle_id"].to_pylist())
    a, b = table.filter(pa.array(vid == "a")), table.filter(pa.array(vid == "b"))
    assert a["seq"].to_pylist() == list(range(60)) and b["seq"].to_pylist() == list(range(60))
    assert (np.diff(a["t_event_ns"].to_numpy()) == 100_000_000).all()
    assert np.allclose(_col(a, "speed"), 12.0, atol=0.01)
    assert np.allclose(_col(a, "heading"), 0.0, atol=1e-3)
    assert np.allclose(_col(b, "speed")[5:-5], 8.0, atol=0.05)
    yaw = _col(b, "yaw_rate")
    assert np.allclose(yaw[10:-10], 0.2, atol=0.005)  # CCW circle: positive
    assert (yaw > 0.05).all()  # one-sided windows at the ends, still the right sign
    assert (np.diff(np.unwrap(_col(b, "heading"))) > 0).all()


def test_simulated_log_exported_as_gnss_csv_imports_back_to_the_same_positions(
    tmp_path: Path,
) -> None:
    log, _ = simulate(SimConfig(vehicles=2, duration_s=20.0, seed=1))
    path = tmp_path / "export.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "time", "lat", "lon", "speed", "bearing"])
        for f in table_to_frames(log):
            bearing = (90 - math.degrees(f.heading)) % 360
            w.writerow(
                [f.vehicle_id, f.t_event_ns / 1e9, repr(f.lat), repr(f.lon), f.speed, bearing]
            )
    mapping = load_mapping("gnss", vehicle_id="id")
    sim = SimConfig()
    table, report = import_log(
        path, mapping, ImportOptions(origin=(sim.origin_lat, sim.origin_lon), rate_hz=0)
    )
    assert report.rows_written == log.num_rows and report.dropped == {}
    # Float seconds in CSV cost sub-microsecond precision; positions must agree to mm.
    assert np.abs(table["t_event_ns"].to_numpy() - log["t_event_ns"].to_numpy()).max() < 1_000
    assert np.abs(_col(table, "x") - _col(log, "x")).max() < 0.005
    assert np.abs(_col(table, "y") - _col(log, "y")).max() < 0.005
    dh = np.angle(np.exp(1j * (_col(table, "heading") - _col(log, "heading"))))
    assert np.abs(dh).max() < 1e-6


def test_geo_round_trip_is_millimetre_exact_over_kilometres() -> None:
    frame = LocalFrame(lat0=-33.86, lon0=151.21)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-20_000, 20_000, 200), rng.uniform(-20_000, 20_000, 200)
    lat, lon = frame.to_geodetic(x, y)
    x2, y2 = frame.to_local(lat, lon)
    assert np.abs(x2 - x).max() < 1e-3 and np.abs(y2 - y).max() < 1e-3


def test_implausible_given_values_are_dropped_and_counted() -> None:
    source = pa.table(
        {
            "t": [0.0, 0.1, 0.2, 0.3, -1.0, None],
            "x": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
            "y": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            "v": [10.0, 10.0, 400.0, 10.0, 10.0, 10.0],
        }
    )
    mapping = ColumnMapping(time="t", lat=None, lon=None, x="x", y="y", speed="v")
    table, report = import_table(source, mapping, ImportOptions(vehicle_id="v1", rate_hz=0))
    assert report.dropped == {"implausible_speed": 1, "negative_time": 1, "missing_time": 1}
    assert table.num_rows == 3 and "implausible_speed" in report.describe()


def test_mapping_errors_tell_the_user_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--vehicle-id"):
        import_log(DATA / "gnss_log.csv", load_mapping("gnss"))
    with pytest.raises(ConfigError, match="course_deg"):
        import_log(DATA / "gnss_log.csv", load_mapping("datalogger"), ImportOptions(vehicle_id="x"))
    with pytest.raises(ConfigError, match="unknown mapping preset"):
        load_mapping("nope")
    with pytest.raises(ConfigError, match="lat\\+lon"):
        ColumnMapping(x="e", y="n")
    with pytest.raises(ConfigError, match="speed_unit"):
        load_mapping("gnss", speed_unit="furlongs/fortnight")
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"tiem": "t"}))
    with pytest.raises(ConfigError, match="tiem"):
        load_mapping(path=bad)
    with pytest.raises(ConfigError, match="does not exist"):
        import_log(tmp_path / "missing.csv", load_mapping("gnss"))
    with pytest.raises(ConfigError, match="format"):
        (tmp_path / "log.xlsx").write_text("x")
        import_log(tmp_path / "log.xlsx", load_mapping("gnss"))


def test_import_log_command_writes_a_canonical_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mapping = tmp_path / "mapping.json"
    mapping.write_text(
        json.dumps(
            {
                "time": "millis",
                "time_unit": "ms",
                "speed": "speed_kmh",
                "speed_unit": "km/h",
                "heading": "course_deg",
            }
        )
    )
    out = tmp_path / "dl.parquet"
    rc = main(
        [
            "import-log",
            str(DATA / "datalogger.csv"),
            "--mapping",
            str(mapping),
            "--vehicle-id",
            "car",
            "--origin",
            "52.52,13.405",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert REPEATED_FIX in printed and "wrote" in printed
    table = read_log(out)
    assert table.num_rows == 40 and set(table["vehicle_id"].to_pylist()) == {"car"}
    # A log with no recognisable position columns stops with one line naming the flags.
    odd = tmp_path / "odd.csv"
    odd.write_text("when,a,b\n1,2,3\n2,3,4\n")
    assert main(["import-log", str(odd), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--map-lat" in err and len(err.strip().splitlines()) == 1


def test_import_flags_have_environment_twins(tmp_path, monkeypatch):
    out = tmp_path / "env.parquet"
    monkeypatch.setenv("DRIVESTREAM_PRESET", "datalogger")
    monkeypatch.setenv("DRIVESTREAM_VEHICLE_ID", "env-car")
    monkeypatch.setenv("DRIVESTREAM_OUT", str(out))
    assert main(["import-log", str(DATA / "datalogger.csv")]) == 0
    assert set(pq.read_table(out).column("vehicle_id").to_pylist()) == {"env-car"}
