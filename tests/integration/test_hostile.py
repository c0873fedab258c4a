"""Hostile records mixed with good frames on the real broker: the service keeps serving,
answers every good frame once, and dead-letters every bad record so that it fits (issue 11)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from kafka import KafkaProducer

from inference.service import InferenceService
from schemas import deadletter, headers
from schemas.deadletter import DeadLetter, decode_dead_letter
from schemas.headers import now_ns, stamp
from schemas.kafka import Consumer, KafkaSettings, Message, Producer
from schemas.sensor import SensorFrame, encode_frames, frame_headers
from schemas.topics import TopicNames
from tests.integration.test_serving import (
    Collector,
    collectors,  # noqa: F401  (a fixture)
    config,
    frame,
    keys,
    send_frames,
    wait_for,
)

pytestmark = pytest.mark.integration

CONNECT_HEADERS = (
    deadletter.CONNECT_TOPIC,
    deadletter.CONNECT_PARTITION,
    deadletter.CONNECT_OFFSET,
    deadletter.CONNECT_STAGE,
    deadletter.CONNECT_EXCEPTION,
    deadletter.CONNECT_MESSAGE,
)
NEAR_MAX = 1_040_000
"""A value just under the broker's default 1 MiB message.max.bytes (with its framing)."""


class _RawKey(str):
    """A header key that reaches the wire as bytes that are not UTF-8, as a client of the
    raw protocol can write it (kafka-python encodes keys with ``str.encode``)."""

    def encode(self, *args: object, **kwargs: object) -> bytes:  # type: ignore[override]
        return b"\xff\xfe-key"


def hostile(settings: KafkaSettings, topic: str) -> dict[int, str]:
    """Send the hostile records to partition 0; returns {offset: what it was}."""
    good = encode_frames([frame(9, 0)])
    t = stamp(now_ns())
    bad_value = encode_frames([SensorFrame("veh-x", 1, 1, 0.0, 0.0, -3.0, 0.0, 0.0, 0.0)])
    nan_value = encode_frames([SensorFrame("veh-y", 1, 1, math.nan, 0.0, 1.0, 0.0, 0.0, 0.0)])
    tag, fine = (headers.SCHEMA, b"sensor_frame/1"), frame_headers(now_ns())
    records: list[tuple[str, bytes, list]] = [
        ("null header value", bad_value, [*fine, ("trace-id", None)]),
        ("int64-max stamp", good, [tag, (headers.T_PRODUCE_NS, stamp(2**63 - 1))]),
        ("near max size", b"\x07" * NEAR_MAX, fine),
        ("500 KB + 300 KB header", b"\x07" * 500_000, [*fine, ("big", b"h" * 300_000)]),
        ("conflicting duplicates", good, [*fine, (headers.T_PRODUCE_NS, stamp(1))]),
        ("null schema", good, [(headers.SCHEMA, None), (headers.T_PRODUCE_NS, t)]),
        ("NaN", nan_value, fine),
    ]
    sent: dict[int, str] = {}
    with Producer(settings) as p:
        for what, value, hdrs in records:
            sent[p.send_and_wait(topic, value, key=b"hostile", headers=hdrs, partition=0)] = what
    raw = KafkaProducer(bootstrap_servers=settings.bootstrap, max_request_size=2_000_000)
    try:
        future = raw.send(topic, good, partition=0, headers=[(_RawKey("k"), b"v")])
        sent[future.get(timeout=30).offset] = "non-UTF-8 header key"
    finally:
        raw.close()
    return sent


def read_dead_letters(
    settings: KafkaSettings, topic: str, n: int
) -> list[tuple[DeadLetter, Message]]:
    with Consumer(settings, group_id=None) as c:
        c.assign(topic, [0])
        got: list[Message] = []
        wait_for(lambda: got.extend(c.poll(timeout_ms=200)) or len(got) >= n, 30, "dead letters")
    return [(decode_dead_letter(m.value), m) for m in got]


def test_hostile_records_are_dead_lettered_and_good_frames_answered_once(
    kafka_settings: KafkaSettings,
    topics: TopicNames,
    collectors,  # noqa: F811
) -> None:
    collector: Collector = collectors(kafka_settings, topics.predictions)
    service = InferenceService(config(topics, budget_ms=5000), kafka_settings).start()
    try:
        with Producer(kafka_settings) as producer:
            n = send_frames(producer, topics.sensors, range(4), range(5))
            bad = hostile(kafka_settings, topics.sensors)
            n += send_frames(producer, topics.sensors, range(4), range(5, 10))
        collector.wait(n)
        dead = read_dead_letters(kafka_settings, topics.deadletter, len(bad))
        assert service.error is None and service._thread is not None
        assert service._thread.is_alive()
    finally:
        service.stop()
    preds = collector.finish()
    assert len(preds) == n and set(keys(preds).values()) == {1}

    assert sorted(d.offset for d, _ in dead) == sorted(bad), [d.reason for d, _ in dead]
    for d, m in dead:
        hdrs = dict(m.headers)
        deadletter.check_dead_letter_headers(m.headers)
        assert all(hdrs.get(h) for h in CONNECT_HEADERS), (bad[d.offset], hdrs)
        assert hdrs[deadletter.CONNECT_OFFSET] == str(d.offset).encode()
        assert hdrs[deadletter.CONNECT_TOPIC] == topics.sensors.encode()
        assert d.reason and d.source_topic == topics.sensors and d.partition == 0
        assert len(m.value) + sum(len(k) + len(v or b"") for k, v in m.headers) < (
            deadletter.MAX_BYTES
        )
    by_what = {bad[d.offset]: d for d, _ in dead}
    assert ("trace-id", None) in by_what["null header value"].raw_headers
    assert "plausible" in by_what["int64-max stamp"].reason
    near = by_what["near max size"].original
    assert near is not None and near.value_size == NEAR_MAX
    assert by_what["500 KB + 300 KB header"].original is not None
    assert "UTF-8" in by_what["non-UTF-8 header key"].reason
    assert Counter(d.connect_stage for d, _ in dead)[deadletter.HEADER_CONVERTER] >= 4


def test_a_dead_letter_the_broker_refuses_for_size_is_sent_minimal(
    kafka_settings: KafkaSettings,
    topics: TopicNames,
    collectors,  # noqa: F811
) -> None:
    # a limit above the deadletter topic's (the broker's default 1 MiB): the whole dead
    # letter of a near-max record is refused, and its minimal form takes its place
    collector = collectors(kafka_settings, topics.predictions)
    cfg = config(topics, budget_ms=5000, max_deadletter_bytes=4 * 1024 * 1024)
    service = InferenceService(cfg, kafka_settings).start()
    try:
        with Producer(kafka_settings) as producer:
            offset = producer.send_and_wait(  # fits; its dead letter has the header in hex
                topics.sensors,
                b"\x07" * 1_000_000,
                headers=[*frame_headers(now_ns()), ("pad", b"p" * 40_000)],
                partition=0,
            )
            n = send_frames(producer, topics.sensors, range(2), range(3))
        collector.wait(n)
        [(d, _)] = read_dead_letters(kafka_settings, topics.deadletter, 1)
        wait_for(lambda: service.stats["deadletter_minimal"] == 1, 30, "the minimal resend")
        assert service.error is None
    finally:
        service.stop()
    assert d.offset == offset and d.raw_value == b"" and d.original is not None
    assert d.original.value_size == 1_000_000 and len(collector.finish()) == n
