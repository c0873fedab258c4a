"""Output on its own: what gets committed, and what a failed delivery stops."""

from __future__ import annotations

from collections import Counter

import pytest

from inference.config import ServeConfig
from inference.errors import DeliveryError
from inference.metrics import ServeMetrics
from inference.output import Output
from schemas.deadletter import decode_dead_letter
from schemas.kafka import Message
from tests.unit.test_inference_service import TOPIC, FakeConsumer, FakeProducer


def make_output() -> tuple[Output, FakeProducer, FakeConsumer]:
    out = Output(ServeConfig(topic_prefix="t-"), ServeMetrics(), Counter())
    producer = FakeProducer()
    out.producer = producer  # type: ignore[assignment]
    return out, producer, FakeConsumer(producer)


def msg(offset: int, partition: int = 0, value: bytes = b"x") -> Message:
    return Message(TOPIC, partition, offset, 0, b"k", value, [("h", b"v")])


def test_commit_stops_below_waiting_frames_and_skips_what_is_already_committed() -> None:
    out, producer, consumer = make_output()
    out.done(msg(10, partition=0))
    out.done(msg(20, partition=1))
    out.commit(consumer, waiting={(TOPIC, 1): 15})  # a frame of offset 15 still waits
    assert consumer.commits == [{(TOPIC, 0): 11, (TOPIC, 1): 15}]
    out.commit(consumer, waiting={})
    assert consumer.commits[-1] == {(TOPIC, 1): 21}  # partition 0 did not move
    out.commit(consumer, waiting={})
    assert len(consumer.commits) == 2 and producer.events == ["flush", "commit"] * 2


def test_offsets_the_broker_refused_are_committed_again_unless_they_moved_on() -> None:
    out, _, consumer = make_output()
    out.done(msg(10, partition=0))
    out.done(msg(20, partition=1))
    out.commit(consumer, waiting={}, wait=False)
    out.done(msg(30, partition=1))
    out.commit(consumer, waiting={}, wait=False)  # partition 1 moved on to 31
    out.commit_refused({(TOPIC, 0): 11, (TOPIC, 1): 21})  # the first request was refused
    out.commit(consumer, waiting={})
    assert consumer.commits == [
        {(TOPIC, 0): 11, (TOPIC, 1): 21},
        {(TOPIC, 1): 31},
        {(TOPIC, 0): 11},  # 21 is stale: 31 is in flight
    ]


def test_failed_delivery_raises_and_nothing_is_committed_after_it() -> None:
    out, producer, consumer = make_output()
    out.done(msg(3))
    producer.fail_on_flush = True
    with pytest.raises(DeliveryError, match="t-predictions"):
        out.commit(consumer, waiting={})
    assert out.halted and consumer.commits == []
    producer.fail_on_flush, producer.failures = False, 0
    out.commit(consumer, waiting={})
    assert consumer.commits == []


def test_forgotten_partitions_are_not_committed() -> None:
    out, _, consumer = make_output()
    out.done(msg(3, partition=0))
    out.done(msg(5, partition=1))
    out.forget({(TOPIC, 0)})
    out.commit(consumer, waiting={})
    assert consumer.commits == [{(TOPIC, 1): 6}]


def test_dead_letter_keeps_the_raw_record_and_where_it_came_from() -> None:
    out, producer, _ = make_output()
    out.dead_letter(msg(7, partition=2, value=b"\x00garbage"), "bad magic")
    [(topic, value)] = producer.sent
    dl = decode_dead_letter(value)
    assert topic == "t-deadletter" and out.stats["deadletter"] == 1
    assert (dl.source_topic, dl.partition, dl.offset, dl.reason) == (TOPIC, 2, 7, "bad magic")
    assert dl.raw_value == b"\x00garbage" and dl.stage == "inference"
