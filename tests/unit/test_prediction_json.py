"""The JSON layout of predictions: what it writes, what it refuses, and serving with it."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter

import numpy as np
import pytest

from inference.batching import Pending
from inference.config import ServeConfig
from inference.metrics import ServeMetrics
from inference.output import Answer, Output
from pipeline.report_client import ReportClient, ReportConfig
from schemas.errors import CodecError, ConfigError, SchemaVersionError
from schemas.kafka import KafkaSettings, Message
from schemas.prediction import (
    Prediction,
    check_prediction_headers,
    decode_prediction,
    encode_prediction,
    prediction_headers,
)
from schemas.prediction_json import FIELDS, decode_prediction_json, encode_prediction_json
from schemas.sensor import SensorFrame

P = Prediction(
    "véh-1", 42, 10**18, (0.5, 1.0, 2.0, 3.0), (1.5, 2.0, 3.25, -4.0), (0.1, 0.2, 0.3, 1e6),
    7, "drivestream", "model", "", 1, 2, 3, 4, 5,
)  # fmt: skip


def test_json_layout_is_what_a_standard_json_writer_produces_and_round_trips() -> None:
    value = encode_prediction_json(P)
    as_dict = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(P).items()}
    assert value == json.dumps(as_dict, separators=(",", ":"), ensure_ascii=False).encode()
    assert list(json.loads(value)) == list(FIELDS)
    assert decode_prediction(value, "json") == P == decode_prediction(encode_prediction(P))


def test_readers_take_any_member_order_whitespace_and_unknown_members() -> None:
    obj = json.loads(encode_prediction_json(P))
    shuffled = {"extra": {"ignored": True}, **dict(reversed(list(obj.items())))}
    assert decode_prediction_json(json.dumps(shuffled, indent=2).encode()) == P


def test_non_finite_positions_are_written_as_null_and_read_back_as_nan() -> None:
    p = dataclasses.replace(P, pred_x=(math.nan, math.inf, 1.0, 2.0))
    value = encode_prediction_json(p)
    assert b'"pred_x":[null,null,1.0,2.0]' in value
    back = decode_prediction_json(value)
    assert math.isnan(back.pred_x[0]) and back.pred_x[2:] == (1.0, 2.0)


@pytest.mark.parametrize(
    "change",
    [
        {"seq": "42"},
        {"seq": True},
        {"t_produce_ns": 2**63},
        {"source": "oracle"},
        {"pred_x": [1.0]},
        {"pred_y": ["a", 1, 2, 3]},
        {"horizons_s": []},
        {"vehicle_id": "x" * 256},
    ],
)
def test_json_reader_refuses_bad_members_with_a_codec_error(change: dict) -> None:
    obj = {**json.loads(encode_prediction_json(P)), **change}
    with pytest.raises(CodecError):
        decode_prediction_json(json.dumps(obj).encode())


@pytest.mark.parametrize("junk", [b"", b"{", b"[1]", b"\xff\xfe", b"null", b"[" * 100_000])
def test_json_reader_refuses_junk_with_a_codec_error(junk: bytes) -> None:
    with pytest.raises(CodecError):
        decode_prediction(junk, "json")


def test_schema_header_names_the_layout() -> None:
    assert prediction_headers("json") == [("ds-schema", b"prediction+json/1")]
    assert check_prediction_headers(prediction_headers("json")) == "json"
    assert check_prediction_headers(prediction_headers()) == "binary"
    with pytest.raises(SchemaVersionError, match="prediction\\+json/1"):
        check_prediction_headers([("ds-schema", b"prediction+json/2")])
    with pytest.raises(CodecError):
        decode_prediction(encode_prediction(P), "yaml")  # type: ignore[arg-type]


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, object, object]] = []

    def send(self, topic, value, key=None, headers=None, partition=None) -> None:
        self.sent.append((topic, value, key, headers))

    def send_many(self, topic, values, keys, headers=None) -> None:
        for value, key in zip(values, keys, strict=True):
            self.send(topic, value, key, headers)


@pytest.mark.parametrize("fmt", ["binary", "json"])
def test_serve_publishes_in_the_configured_layout_with_its_schema_tag(fmt: str) -> None:
    out = Output(ServeConfig(predictions_format=fmt), ServeMetrics(), Counter())
    producer = RecordingProducer()
    out.producer = producer  # type: ignore[assignment]
    frame = SensorFrame("car-1", 9, 10**18, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)
    item = Pending.of(frame, None, "sensors", 0, 5, 10**18 + 1, 10**18 + 2, 10**18 + 10**9)
    answer = Answer((0.5, 1.0), -1, ["cv"], "fallback", "warmup", 10**18 + 3, 10**18 + 4)
    out.publish([item], np.array([[[0.5, 0.0], [1.0, 0.0]]]), answer)
    ((topic, value, key, hdrs),) = producer.sent
    assert topic == "predictions" and key == "car-1"
    assert check_prediction_headers(hdrs) == fmt  # type: ignore[arg-type]
    p = decode_prediction(value, fmt)  # type: ignore[arg-type]
    assert (p.vehicle_id, p.seq, p.pred_x, p.source, p.reason) == (
        "car-1", 9, (0.5, 1.0), "fallback", "warmup",
    )  # fmt: skip
    assert p.t_produce_ns == 10**18 + 1 and p.t_published_ns >= p.t_infer_end_ns


def test_serve_refuses_an_unknown_predictions_format() -> None:
    with pytest.raises(ConfigError, match="predictions_format"):
        ServeConfig(predictions_format="avro")


def test_report_reads_both_layouts_and_counts_what_is_neither() -> None:
    class Polls:
        def __init__(self, batch: list[Message]) -> None:
            self.batch = batch

        def poll(self, timeout_ms: int = 0) -> list[Message]:
            out, self.batch = self.batch, []
            return out

    second = dataclasses.replace(P, seq=43)
    records = [
        (encode_prediction(P), prediction_headers()),
        (encode_prediction_json(second), prediction_headers("json")),
        (encode_prediction_json(P), prediction_headers()),  # JSON bytes tagged binary
    ]
    batch = [Message("predictions", 0, i, 0, b"k", v, h) for i, (v, h) in enumerate(records)]
    client = ReportClient(ReportConfig(plots=False), KafkaSettings())
    client._predictions, client._sensors = Polls(batch), Polls([])  # type: ignore[assignment]
    assert client.poll() == 2 and client.undecodable == 1
    assert [r.prediction for r in client.received] == [P, second]
