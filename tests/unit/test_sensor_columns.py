"""The columnar decoder serve uses against the per-record decoder, on fuzzed polls.

A poll's records decoded in one pass must give exactly what ``decode_frames`` gives record by
record: the same frames, and for every bad record the same error class and message (its
dead-letter reason).
"""

from __future__ import annotations

import dataclasses
import math
import random
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from schemas import headers, sensor, sensor_columns
from schemas.errors import ValidationError
from schemas.sensor import (
    SensorFrame,
    check_frame_headers,
    decode_frames,
    encode_frames,
    frame_headers,
)
from schemas.sensor_columns import check_frame_headers_many, decode_columns
from tests.unit.test_hostile_records import _random_headers

BODY = struct.Struct("<qq6d2db")
BAD_FLOATS = [math.nan, math.inf, -math.inf, 1e308, -0.0, 1e6 + 1e-3, 120.0000001, 4.5, -31.0]


def _frame(rng: random.Random) -> SensorFrame:
    geo = rng.random() < 0.5
    return SensorFrame(
        rng.choice(["v1", "veh-ü", "車両-7", "x" * 128, "a b"]),
        rng.randint(0, 2**63 - 1) if rng.random() < 0.1 else rng.randint(0, 10**6),
        rng.randint(0, 2**63 - 1) if rng.random() < 0.1 else rng.randint(0, 2 * 10**18),
        rng.uniform(-1e6, 1e6),
        rng.uniform(-1e6, 1e6),
        rng.choice([0.0, 120.0, rng.uniform(0, 120)]),
        rng.choice([math.pi + 1e-6, -math.pi - 1e-6, rng.uniform(-math.pi, math.pi)]),
        rng.choice([4.0, -4.0, rng.uniform(-4, 4)]),
        rng.choice([30.0, -30.0, rng.uniform(-30, 30)]),
        rng.choice([90.0, -90.0, rng.uniform(-90, 90)]) if geo else None,
        rng.choice([180.0, -180.0, rng.uniform(-180, 180)]) if geo else None,
        rng.choice([None, 0, 127, rng.randint(0, 127)]),
    )


def _raw_frame(rng: random.Random, f: SensorFrame) -> bytes:
    """One frame's bytes, sometimes with a field no validator accepts."""
    vid = f.vehicle_id.encode()
    fields = [
        f.seq,
        f.t_event_ns,
        f.x,
        f.y,
        f.speed,
        f.heading,
        f.yaw_rate,
        f.accel,
        math.nan if f.lat is None else f.lat,
        math.nan if f.lon is None else f.lon,
        -1 if f.gnss_quality is None else f.gnss_quality,
    ]
    if rng.random() < 0.3:
        i = rng.randrange(11)
        if i < 2:
            fields[i] = rng.choice([-1, -(2**63)])
        elif i < 10:
            fields[i] = rng.choice([*BAD_FLOATS, -1.0, 91.0, 181.0])
        else:
            fields[i] = rng.choice([-2, -128, 127])
    if rng.random() < 0.05:
        vid = rng.choice([b"", b"\xff\xfe", b"y" * 129, "é".encode()[:1]])
    return bytes([len(vid)]) + vid + BODY.pack(*fields)


def _value(rng: random.Random) -> bytes:
    """A record: mostly valid, else hostile in one of the ways a decoder must survive."""
    n = rng.choice([1, 1, 1, 2, 3, 7])
    frames = b"".join(_raw_frame(rng, _frame(rng)) for _ in range(n))
    count = n
    kind = rng.random()
    if kind < 0.04:
        count = rng.choice([0, n + 1, max(0, n - 1), 65535])
    value = struct.pack("<H", count) + frames
    if kind > 0.96:
        value = value[: rng.randrange(len(value))]  # truncated anywhere
    elif 0.9 < kind <= 0.93:
        value += rng.randbytes(rng.randint(1, 5))  # trailing bytes
    elif 0.93 < kind <= 0.96:
        value = rng.randbytes(rng.randint(0, 200))  # noise
    return value


def _reference(values: list[bytes]) -> list[tuple[list[SensorFrame], tuple[str, str] | None]]:
    out: list[tuple[list[SensorFrame], tuple[str, str] | None]] = []
    for v in values:
        try:
            out.append((decode_frames(v), None))
        except ValidationError as exc:
            out.append(([], (type(exc).__name__, str(exc))))
    return out


def _columnar(values: list[bytes]) -> list[tuple[list[SensorFrame], tuple[str, str] | None]]:
    cols = decode_columns(values)
    assert len(cols.errors) == len(values) == len(cols.bounds) - 1
    return [
        (cols.frames(r), None if e is None else (type(e).__name__, str(e)))
        for r, e in enumerate(cols.errors)
    ]


@pytest.mark.parametrize("seed", range(6))
def test_a_fuzzed_poll_decodes_to_the_same_frames_and_errors_as_record_by_record(seed):
    rng = random.Random(seed)
    for _ in range(40):
        values = [_value(rng) for _ in range(rng.randint(1, 80))]
        assert _columnar(values) == _reference(values)


def test_every_kind_of_bad_record_keeps_its_reason_beside_good_ones():
    good = SensorFrame("car", 1, 10**9, 1.0, 2.0, 3.0, 0.1, 0.0, 0.0)
    cases = [
        b"",
        b"\x01",
        b"\x00\x00",
        encode_frames([good])[:-1],
        encode_frames([good]) + b"\x00",
        b"\x02\x00" + encode_frames([good])[2:],
        encode_frames([dataclasses.replace(good, x=math.nan)]),
        encode_frames([dataclasses.replace(good, speed=-1.0)]),
        encode_frames([dataclasses.replace(good, heading=4.0)]),
        encode_frames([dataclasses.replace(good, lat=1.0)]),
        encode_frames([dataclasses.replace(good, gnss_quality=-5)]),
        encode_frames([dataclasses.replace(good, vehicle_id="")]),
        encode_frames([good, dataclasses.replace(good, seq=-3)]),
        b"\x01\x00\x02\xff\xfe" + encode_frames([good])[2 + 1 + 3 :],
    ]
    values = [encode_frames([good]), *cases, encode_frames([good, good])]
    got = _columnar(values)
    assert got == _reference(values)
    assert [e is None for _, e in got] == [True] + [False] * len(cases) + [True]
    assert got[7][1] == ("ValidationError", "x: must be finite, got nan")


def test_valid_records_never_take_the_per_record_path(monkeypatch):
    """The vectorised checks accept every frame validate_frame accepts (bounds included):
    only bad records are handed to decode_frames for their error."""
    rng = random.Random(7)
    good = [encode_frames([_frame(rng) for _ in range(rng.choice([1, 2, 5]))]) for _ in range(300)]
    bad = [b"\x00\x00", encode_frames([dataclasses.replace(_frame(rng), accel=31.0)])]
    calls = []
    real = sensor.decode_frames

    def counting(value: bytes, validate: bool = True) -> list[SensorFrame]:
        calls.append(value)
        return real(value, validate)

    monkeypatch.setattr(sensor_columns, "decode_frames", counting)
    cols = decode_columns(good + bad)
    assert calls == bad
    assert len(cols) == sum(len(real(v)) for v in good)


def test_an_empty_poll_and_a_poll_of_bad_records_have_no_frames():
    assert len(decode_columns([])) == 0 and decode_columns([]).bounds == [0]
    cols = decode_columns([b"", b"\x00"])
    assert len(cols) == 0 and cols.values.shape == (0, 8) and cols.bounds == [0, 0, 0]
    assert [str(e) for e in cols.errors] == [
        "value: empty",
        "sensor_frame: truncated value (1 bytes)",
    ]


def test_columns_hold_the_frames_values_for_the_serving_loop():
    frames = [
        SensorFrame("a", 5, 10**18, 1.5, -2.5, 10.0, 0.25, 0.01, -0.5, 48.0, 11.0, 3),
        SensorFrame("b", 6, 10**18 + 1, 3.0, 4.0, 0.0, -1.0, 0.0, 0.0),
    ]
    cols = decode_columns([encode_frames(frames[:1]), b"junk", encode_frames(frames[1:])])
    assert cols.bounds == [0, 1, 1, 2] and cols.errors[1] is not None
    assert cols.vehicle_id == ["a", "b"] and cols.seq == [5, 6]
    assert cols.t_event_ns == [10**18, 10**18 + 1] and cols.times.tolist() == cols.t_event_ns
    assert cols.values[0].tolist() == [1.5, -2.5, 10.0, 0.25, 0.01, -0.5, 48.0, 11.0]
    assert math.isnan(cols.values[1, 6]) and cols.gnss_quality.tolist() == [3, -1]


def test_a_polls_headers_are_checked_like_record_by_record():
    rng = random.Random(3)
    now = headers.now_ns()
    stamps = [0, now, now + headers.MAX_FUTURE_NS - 10**9, now + 2 * headers.MAX_FUTURE_NS, -1]
    polls = [
        [
            _random_headers(rng)
            if rng.random() < 0.5
            else list(frame_headers(rng.choice([*stamps, rng.randint(-(2**63), 2**63 - 1)])))
            for _ in range(rng.randint(1, 60))
        ]
        for _ in range(40)
    ]
    polls.append([None, [], [(headers.SCHEMA, "sensor_frame/1"), frame_headers(5)[1]]])
    for hdrs in polls:
        got_t, got_e = check_frame_headers_many(hdrs)
        for h, t, e in zip(hdrs, got_t, got_e, strict=True):
            try:
                want = (check_frame_headers(h), None)
            except ValidationError as exc:
                want = (0, (type(exc).__name__, str(exc)))
            assert (t, None if e is None else (type(e).__name__, str(e))) == want


@pytest.mark.parametrize("seed", range(5))
def test_the_compiled_range_check_agrees_with_the_range_arithmetic(seed):
    """`_scan` flags a record of one frame exactly when whole-array numpy arithmetic over
    the same bounds rejects it, on rows mixing good values, NaN, infinities, edges and
    lat/lon present, absent or half."""
    rng = random.Random(seed)
    n = 400
    edges = [*BAD_FLOATS, 0.0, 90.0, -90.0, 180.0, -180.0, 1e6, -1e6]
    vals = np.array(
        [
            [rng.choice(edges) if rng.random() < 0.3 else rng.uniform(-1, 1) for _ in range(8)]
            for _ in range(n)
        ]
    )
    vals[rng.sample(range(n), 80), 6:] = math.nan  # no fix: lat and lon both absent
    ints = np.array([[rng.choice([-1, 0, 5, 2**62]) for _ in range(2)] for _ in range(n)])
    q = np.array([rng.choice([0, 1, -2, -1, -128, 127]) for _ in range(n)], np.int8)
    low, high = sensor_columns._LOW, sensor_columns._HIGH
    inside = (vals >= low) & (vals <= high)
    inside[:, 6:] |= np.isnan(vals[:, 6:]).all(axis=1, keepdims=True)
    want = inside.all(axis=1) & (ints.min(axis=1) >= 0) & (q >= -1)
    records = [
        struct.pack("<HB1s", 1, 1, b"v") + BODY.pack(*ints[r], *vals[r], q[r]) for r in range(n)
    ]
    ends = np.cumsum([len(v) for v in records])
    *columns, flagged = sensor_columns._scan(np.frombuffer(b"".join(records), np.uint8), ends)
    assert 0 < want.sum() < n
    np.testing.assert_array_equal(flagged, np.flatnonzero(~want))
    np.testing.assert_array_equal(columns[1], vals)  # values read back bit for bit
    np.testing.assert_array_equal(columns[0][2:].T, ints)  # seq, t_event_ns
    np.testing.assert_array_equal(columns[2], q)


_FIRST_CALLS = {
    "window gather": (
        "from inference.rings import Rings",
        "Rings(4, 1).store([0], np.zeros(1, np.int64), np.zeros((1, 8)), [0], [0], [1], 1)",
    ),
    "decode": (
        "from schemas import sensor, sensor_columns",
        "sensor_columns.decode_columns("
        "[sensor.encode_frames([sensor.SensorFrame('v', 0, 1, *[0.0] * 6)])])",
    ),
}


@pytest.mark.parametrize("kernel", sorted(_FIRST_CALLS))
def test_a_fresh_process_imports_nothing_on_its_first_call_of_a_kernel(kernel):
    """A compiled kernel's first call types its arrays in Python, importing numpy.ma
    (~35 ms, a budget miss on the first frame served): importing the module pays it."""
    imports, call = _FIRST_CALLS[kernel]
    code = "\n".join(
        [
            "import sys",
            "import numpy as np",
            imports,
            "before = set(sys.modules)",
            call,
            "print(sorted(set(sys.modules) - before))",
        ]
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
