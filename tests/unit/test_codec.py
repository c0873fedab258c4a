"""Codec round trips (property-based) and validation of every record in ``schemas``."""

from __future__ import annotations

import dataclasses
import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import headers
from schemas.binary import pack_meta_blob, unpack_meta_blob
from schemas.deadletter import DeadLetter, decode_dead_letter, encode_dead_letter
from schemas.envelope import ModelEnvelope, decode_envelope, encode_envelope
from schemas.errors import CodecError, SchemaVersionError, ValidationError
from schemas.model_spec import InputSpec
from schemas.prediction import (
    Prediction,
    check_prediction_headers,
    decode_prediction,
    encode_prediction,
    prediction_headers,
)
from schemas.sensor import (
    MAX_FRAMES_PER_RECORD,
    SensorFrame,
    check_frame_headers,
    decode_frames,
    encode_frames,
    frame_headers,
    frames_to_table,
    table_to_frames,
    validate_frame,
)

INT64 = st.integers(0, 2**63 - 1)


def bounded(limit: float) -> st.SearchStrategy[float]:
    return st.floats(-limit, limit, allow_nan=False, allow_infinity=False)


vehicle_ids = st.text(min_size=1, max_size=20).filter(lambda s: 0 < len(s.encode()) <= 128)


@st.composite
def sensor_frames(draw: st.DrawFn) -> SensorFrame:
    geo = draw(st.booleans())
    return SensorFrame(
        vehicle_id=draw(vehicle_ids),
        seq=draw(INT64),
        t_event_ns=draw(INT64),
        x=draw(bounded(1e6)),
        y=draw(bounded(1e6)),
        speed=draw(st.floats(0, 120)),
        heading=draw(bounded(math.pi)),
        yaw_rate=draw(bounded(4.0)),
        accel=draw(bounded(30.0)),
        lat=draw(bounded(90)) if geo else None,
        lon=draw(bounded(180)) if geo else None,
        gnss_quality=draw(st.none() | st.integers(0, 127)),
    )


GOOD = SensorFrame("veh-1", 7, 1_000, 1.0, 2.0, 10.0, 0.5, 0.1, -0.3, 48.1, 11.5, 4)


# --- sensor frames --------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(sensor_frames(), min_size=1, max_size=12))
def test_sensor_frames_round_trip_exactly(frames: list[SensorFrame]) -> None:
    assert decode_frames(encode_frames(frames)) == frames


@settings(max_examples=50, deadline=None)
@given(st.lists(sensor_frames(), min_size=1, max_size=12))
def test_sensor_frames_round_trip_through_arrow(frames: list[SensorFrame]) -> None:
    assert table_to_frames(frames_to_table(frames)) == frames


@settings(max_examples=100, deadline=None)
@given(sensor_frames(), st.integers(1, 40))
def test_truncated_sensor_value_is_a_codec_error(frame: SensorFrame, cut: int) -> None:
    value = encode_frames([frame])
    with pytest.raises(CodecError):
        decode_frames(value[: max(0, len(value) - cut)])


BAD_FRAMES = {
    "vehicle_id": [{"vehicle_id": ""}, {"vehicle_id": "v" * 129}, {"vehicle_id": 5}],
    "seq": [{"seq": -1}, {"seq": True}, {"seq": 1.5}],
    "t_event_ns": [{"t_event_ns": -5}],
    "x": [{"x": math.nan}, {"x": 2e6}, {"x": "1"}],
    "y": [{"y": math.inf}],
    "speed": [{"speed": -0.1}, {"speed": 121.0}, {"speed": math.nan}],
    "heading": [{"heading": 3.2}, {"heading": -3.2}],
    "yaw_rate": [{"yaw_rate": 4.5}],
    "accel": [{"accel": -31.0}],
    "lat": [{"lat": None}, {"lat": 91.0}, {"lat": math.nan}],
    "lon": [{"lon": None}, {"lon": -181.0}],
}


@pytest.mark.parametrize(
    ("field", "change"), [(f, c) for f, cs in BAD_FRAMES.items() for c in cs], ids=str
)
def test_validation_names_the_bad_field(field: str, change: dict) -> None:
    frame = dataclasses.replace(GOOD, **change)
    with pytest.raises(ValidationError) as info:
        validate_frame(frame)
    assert info.value.field == field
    assert field in str(info.value)
    # Decoding with validation rejects the same frame when the codec can carry it
    # (a bool seq is packed as the integer it is, so it has no wire form to reject).
    if isinstance(getattr(frame, field), bool):
        return
    try:
        value = encode_frames([frame])
    except (CodecError, struct.error, TypeError, AttributeError):
        return
    with pytest.raises(ValidationError):
        decode_frames(value)
    assert decode_frames(value, validate=False)[0].vehicle_id == frame.vehicle_id


def test_good_frame_validates() -> None:
    assert GOOD.validate() is GOOD


def test_record_frame_count_limits() -> None:
    with pytest.raises(CodecError, match=r"1\.\.1024"):
        encode_frames([])
    with pytest.raises(CodecError):
        encode_frames([GOOD] * (MAX_FRAMES_PER_RECORD + 1))
    value = encode_frames([GOOD] * MAX_FRAMES_PER_RECORD)
    assert len(decode_frames(value)) == MAX_FRAMES_PER_RECORD


def test_malformed_sensor_values_are_codec_errors() -> None:
    value = encode_frames([GOOD])
    with pytest.raises(CodecError, match="empty"):
        decode_frames(b"")
    with pytest.raises(CodecError, match="no frames"):
        decode_frames(b"\x00\x00")
    with pytest.raises(CodecError, match="trailing"):
        decode_frames(value + b"\x00")
    bad_utf8 = value[:3] + b"\xff" + value[4:]  # inside the vehicle id
    with pytest.raises(CodecError, match="UTF-8"):
        decode_frames(bad_utf8)


def test_frame_headers_carry_schema_and_produce_stamp() -> None:
    t = headers.now_ns()
    assert check_frame_headers(frame_headers(t)) == t
    with pytest.raises(CodecError, match="missing"):
        check_frame_headers([])
    with pytest.raises(CodecError, match=headers.T_PRODUCE_NS):
        check_frame_headers(frame_headers(t)[:1])
    with pytest.raises(SchemaVersionError, match="sensor_frame/2"):
        check_frame_headers([(headers.SCHEMA, b"sensor_frame/2"), *frame_headers(t)[1:]])
    with pytest.raises(CodecError, match="8 bytes"):
        check_frame_headers([frame_headers(t)[0], (headers.T_PRODUCE_NS, b"\x01")])


def test_out_of_range_gnss_quality_is_rejected_by_validation() -> None:
    frame = dataclasses.replace(GOOD, gnss_quality=200)
    with pytest.raises(ValidationError):
        validate_frame(frame)


def test_negative_gnss_quality_survives_or_is_rejected() -> None:
    frame = dataclasses.replace(GOOD, gnss_quality=-1)
    try:
        validate_frame(frame)
    except ValidationError:
        return
    assert decode_frames(encode_frames([frame]))[0].gnss_quality == -1


def test_seq_beyond_int64_is_rejected_by_validation() -> None:
    with pytest.raises(ValidationError):
        validate_frame(dataclasses.replace(GOOD, seq=2**63))


# --- predictions -----------------------------------------------------------------------

STAMP = st.integers(-(2**63), 2**63 - 1)


@st.composite
def predictions(draw: st.DrawFn) -> Prediction:
    k = draw(st.integers(1, 8))
    floats = st.floats(allow_nan=False)
    return Prediction(
        vehicle_id=draw(st.text(max_size=30).filter(lambda s: len(s.encode()) <= 255)),
        seq=draw(STAMP),
        t_event_ns=draw(STAMP),
        horizons_s=tuple(draw(st.lists(floats, min_size=k, max_size=k))),
        pred_x=tuple(draw(st.lists(floats, min_size=k, max_size=k))),
        pred_y=tuple(draw(st.lists(floats, min_size=k, max_size=k))),
        model_version=draw(STAMP),
        model_name=draw(st.sampled_from(["gru", "ctrv", "cv", ""])),
        source=draw(st.sampled_from(["model", "fallback"])),
        reason=draw(st.text(max_size=40).filter(lambda s: len(s.encode()) <= 255)),
        t_produce_ns=draw(STAMP),
        t_consumed_ns=draw(STAMP),
        t_infer_start_ns=draw(STAMP),
        t_infer_end_ns=draw(STAMP),
        t_published_ns=draw(STAMP),
    )


@settings(max_examples=300, deadline=None)
@given(predictions())
def test_prediction_round_trip_exactly(p: Prediction) -> None:
    assert decode_prediction(encode_prediction(p)) == p


@settings(max_examples=100, deadline=None)
@given(predictions(), st.integers(1, 60))
def test_truncated_prediction_is_a_codec_error(p: Prediction, cut: int) -> None:
    value = encode_prediction(p)
    with pytest.raises(CodecError):
        decode_prediction(value[: max(0, len(value) - cut)])


def _prediction() -> Prediction:
    return Prediction(
        "v", 1, 2, (0.5, 1.0), (1.0, 2.0), (3.0, 4.0), 7, "gru", "model", "", 1, 2, 3, 4
    )


def test_prediction_validation_and_headers() -> None:
    p = _prediction()
    assert p.published(99).t_published_ns == 99
    with pytest.raises(CodecError, match="differ in length"):
        encode_prediction(dataclasses.replace(p, pred_x=(1.0,)))
    value = encode_prediction(p)
    with pytest.raises(CodecError, match="trailing"):
        decode_prediction(value + b"\x00")
    src = 1 + 1 + 24 + 1 + 3  # string "v", head, string "gru", then source index
    with pytest.raises(CodecError, match="source"):
        decode_prediction(value[:src] + b"\x07" + value[src + 1 :])
    check_prediction_headers(prediction_headers())
    with pytest.raises(SchemaVersionError):
        check_prediction_headers([(headers.SCHEMA, b"sensor_frame/1")])
    with pytest.raises(CodecError):
        check_prediction_headers(None)


def test_prediction_with_non_utf8_string_is_a_codec_error() -> None:
    value = encode_prediction(_prediction())
    with pytest.raises(CodecError):
        decode_prediction(value[:1] + b"\xff" + value[2:])


def test_prediction_with_unknown_source_is_a_codec_error() -> None:
    with pytest.raises(CodecError):
        encode_prediction(dataclasses.replace(_prediction(), source="magic"))  # type: ignore[arg-type]


# --- model envelopes -------------------------------------------------------------------


@st.composite
def envelopes(draw: st.DrawFn) -> ModelEnvelope:
    horizons = sorted(draw(st.sets(st.floats(0.1, 10.0), min_size=1, max_size=4)))
    return ModelEnvelope(
        name=draw(st.text(min_size=1, max_size=20)),
        version=draw(st.integers(0, 2**40)),
        parent_version=draw(st.integers(-1, 2**40)),
        created_ns=draw(INT64),
        trained_until_ns=draw(INT64),
        steps=draw(st.integers(0, 2**40)),
        samples=draw(st.integers(0, 2**40)),
        input_spec=InputSpec(history=draw(st.integers(2, 50)), horizons_s=tuple(horizons)),
        onnx=draw(st.binary(max_size=2000)),
        metrics=draw(st.dictionaries(st.text(max_size=10), st.floats(allow_nan=False))),
    )


@settings(max_examples=150, deadline=None)
@given(envelopes())
def test_envelope_round_trip_and_digest(env: ModelEnvelope) -> None:
    back = decode_envelope(encode_envelope(env))
    assert back == env
    back.verify()


def test_envelope_digest_catches_tampering_and_bad_metadata() -> None:
    env = ModelEnvelope(
        name="m",
        version=3,
        parent_version=2,
        created_ns=1,
        trained_until_ns=2,
        steps=3,
        samples=4,
        input_spec=InputSpec(),
        onnx=b"onnx-bytes",
    )
    value = encode_envelope(env)
    tampered = decode_envelope(value[:-1] + b"X")
    with pytest.raises(ValidationError, match="digest"):
        tampered.verify()
    with pytest.raises(CodecError):
        decode_envelope(b"\x01")
    with pytest.raises(CodecError, match="exceeds"):
        decode_envelope(b"\xff\x00\x00\x00{}")
    with pytest.raises(CodecError, match="JSON"):
        decode_envelope(pack_meta_blob({}, b"")[:4] + b"{not json")
    with pytest.raises(CodecError, match="name"):
        decode_envelope(pack_meta_blob({"version": 1}, b""))
    meta, blob = unpack_meta_blob(value, "model_envelope")
    with pytest.raises(CodecError, match="bad field"):
        decode_envelope(pack_meta_blob({**meta, "version": "x"}, blob))


# --- dead letters ----------------------------------------------------------------------


@st.composite
def dead_letters(draw: st.DrawFn) -> DeadLetter:
    return DeadLetter(
        source_topic=draw(st.text(min_size=1, max_size=30)),
        partition=draw(st.integers(0, 1000)),
        offset=draw(st.integers(0, 2**62)),
        reason=draw(st.text(max_size=200)),
        stage=draw(st.sampled_from(["inference", "trainer", "replay"])),
        raw_value=draw(st.binary(max_size=500)),
        raw_headers=tuple(
            draw(st.lists(st.tuples(st.text(max_size=10), st.binary(max_size=20)), max_size=4))
        ),
    )


@settings(max_examples=200, deadline=None)
@given(dead_letters())
def test_dead_letter_round_trip_keeps_raw_bytes(d: DeadLetter) -> None:
    assert decode_dead_letter(encode_dead_letter(d)) == d


def test_dead_letter_bad_metadata_is_a_codec_error() -> None:
    with pytest.raises(CodecError):
        decode_dead_letter(pack_meta_blob({"source_topic": "t"}, b""))
    meta = {"source_topic": "t", "partition": 0, "offset": 1, "reason": "r", "stage": "s"}
    with pytest.raises(CodecError):
        decode_dead_letter(pack_meta_blob({**meta, "headers": [["k", "zz"]]}, b""))
    with pytest.raises(CodecError):
        decode_dead_letter(b"")


def test_prediction_without_horizons_is_a_codec_error() -> None:
    p = Prediction("v", 0, 0, (), (), (), -1, "cv", "fallback", "no_model", 0, 0, 0, 0, 0)
    with pytest.raises(CodecError, match="horizons"):
        encode_prediction(p)
