"""What `drivestream tail` prints for each record kind, and for junk (without a broker)."""

from __future__ import annotations

import json
import random

import pytest

from pipeline.tail import TailConfig
from pipeline.tail_render import render, to_line
from schemas.errors import ConfigError
from schemas.kafka import Message
from tests import wire_vectors

VECTORS = wire_vectors.load()


def message(stem: str, topic: str | None = None, with_headers: bool = True) -> Message:
    v = VECTORS[stem]
    hdrs = [(h["key"], None if h["hex"] is None else bytes.fromhex(h["hex"])) for h in v["headers"]]
    key = None if v["key"] is None else bytes.fromhex(v["key"]["hex"])
    return Message(
        topic or "t-" + v["topic"], 3, 17, 1_767_225_600_000, key,
        bytes.fromhex(v["value_hex"]), hdrs if with_headers else [],
    )  # fmt: skip


def shown(msg: Message, prefix: str = "t-") -> dict:
    line = to_line(render(msg, prefix))
    assert "\n" not in line
    return json.loads(line)


@pytest.mark.parametrize("stem", sorted(VECTORS))
@pytest.mark.parametrize("with_headers", [True, False])
def test_each_vector_prints_as_its_record_with_where_it_came_from(
    stem: str, with_headers: bool
) -> None:
    v = VECTORS[stem]
    out = shown(message(stem, with_headers=with_headers))
    assert "error" not in out, out.get("error")
    assert (out["partition"], out["offset"], out["timestamp_ms"]) == (3, 17, 1_767_225_600_000)
    assert out["key"] == (v["key"] and v["key"]["text"])
    if with_headers:  # by header; without, by topic name (JSON predictions need the header)
        assert out["schema"] == v["schema"]
        assert out["headers"] == [[h["key"], h["value"]] for h in v["headers"]]
    record = out["value"]
    if v["schema"].startswith("prediction"):
        assert record == v["record"]
    elif v["schema"].startswith("sensor"):
        assert record["frames"] == v["record"]["frames"] and "invalid" not in record
    elif v["schema"].startswith("model"):
        assert record["onnx"] == {"size": len(bytes.fromhex(v["record"]["onnx"])),
                                  "matches_digest": True}  # fmt: skip
        assert record["signature"] == v["record"]["signature"]
    elif v["schema"].startswith("ps_"):
        assert record["tensors"] == {k: t["shape"] for k, t in v["record"]["tensors"].items()}


def test_headerless_predictions_are_read_in_either_layout_by_the_topic_name() -> None:
    out = shown(message("prediction-json", with_headers=False))
    assert out["schema"] == "prediction+json/1"
    out = shown(message("prediction-json", topic="t-sensors", with_headers=False))
    assert out["schema"] is None and "base64" in out["value"] and "error" in out


def test_unknown_topics_schemas_and_junk_are_shown_as_base64_never_raised() -> None:
    rng = random.Random(7)
    for stem in sorted(VECTORS):
        good = message(stem)
        for _ in range(50):
            value = bytearray(good.value)
            for _ in range(rng.randint(1, 4)):
                value[rng.randrange(len(value))] = rng.randrange(256)
            out = shown(good._replace(value=bytes(value[: rng.randrange(len(value) + 1)])))
            assert out["value"] is None or "error" not in out or "base64" in out["value"]
    out = shown(message("prediction")._replace(topic="other", headers=[]))
    assert out["schema"] is None and out["error"].startswith("CodecError")
    out = shown(message("prediction")._replace(headers=[("ds-schema", b"prediction/9")]))
    assert "SchemaVersionError" in out["error"]
    out = shown(message("prediction")._replace(key=b"\xff\x00", headers=[("k", b"\x01")]))
    assert out["key"] == {"base64": "/wA="} and out["headers"] == [["k", {"base64": "AQ=="}]]


def test_an_invalid_frame_is_shown_with_what_is_wrong_and_a_tombstone_as_null() -> None:
    good = message("sensor-frame")
    value = bytearray(good.value)
    at = 2 + 1 + len("car-1") + 8 + 8 + 8 + 8  # count, id, seq, t_event_ns, x, y
    value[at : at + 8] = bytes.fromhex("0000000000c06240")  # speed 150 m/s
    out = shown(good._replace(value=bytes(value)))
    assert out["value"]["frames"][0]["speed"] == 150.0 and "speed" in out["value"]["invalid"]
    assert shown(good._replace(value=b""))["value"] is None


def test_tail_needs_a_topic_and_a_sane_count() -> None:
    with pytest.raises(ConfigError, match="TOPIC"):
        TailConfig()
    with pytest.raises(ConfigError, match="count"):
        TailConfig(topic="predictions", count=-1)
    assert TailConfig(topic="predictions", topic_prefix="t-").topic_name == "t-predictions"
