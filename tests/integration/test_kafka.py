"""The Kafka wrapper against the real broker: ordering per key, headers, topic configs,
commits."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict

import pytest
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
from kafka.partitioner.default import murmur2

from schemas.errors import ConfigError
from schemas.kafka import Consumer, KafkaSettings, Message, Producer, ensure_topics
from schemas.topics import TopicNames, default_topics

pytestmark = pytest.mark.integration


def consume_n(settings: KafkaSettings, topic: str, n: int, timeout_s: float = 30) -> list[Message]:
    with Consumer(settings, [topic], group_id=f"g-{topic}") as consumer:
        got: list[Message] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < n and time.monotonic() < deadline:
            got.extend(consumer.poll(timeout_ms=200))
        return got


def test_keyed_records_keep_order_per_partition(kafka_settings, topics: TopicNames):
    keys = [f"veh-{i}" for i in range(8)]
    with Producer(kafka_settings) as producer:
        for seq in range(50):
            for key in keys:
                producer.send(topics.sensors, f"{key}:{seq}".encode(), key=key)
    got = consume_n(kafka_settings, topics.sensors, 50 * len(keys))

    assert len(got) == 50 * len(keys)
    per_key: dict[bytes, list[int]] = defaultdict(list)
    partition_of: dict[bytes, set[int]] = defaultdict(set)
    for m in got:
        per_key[m.key].append(int(m.value.split(b":")[1]))
        partition_of[m.key].add(m.partition)
    assert all(seqs == list(range(50)) for seqs in per_key.values())
    assert all(len(p) == 1 for p in partition_of.values()), "a key was split across partitions"
    assert len({next(iter(p)) for p in partition_of.values()}) > 1, "all keys on one partition"
    # Java's (and kafka-python's) murmur2 placement, so every client co-partitions a vehicle
    with Producer(kafka_settings) as producer:
        n = len(producer.partitions_for(topics.sensors))
    for key, parts in partition_of.items():
        assert parts == {(murmur2(key) & 0x7FFFFFFF) % n}, key


def test_headers_round_trip(kafka_settings, topic_factory):
    topic = topic_factory()
    headers = [("ds-schema", b"sensor_frame/1"), ("ds-t-produce-ns", (123).to_bytes(8, "big"))]
    with Producer(kafka_settings) as producer:
        producer.send(topic, b"payload", key="k", headers=headers)
    (msg,) = consume_n(kafka_settings, topic, 1)
    assert msg.headers == headers
    assert msg.value == b"payload" and msg.key == b"k"


def test_close_flushes_queued_records(kafka_settings, topic_factory):
    topic = topic_factory()
    producer = Producer(kafka_settings)
    for i in range(500):
        producer.send(topic, b"%d" % i)
    producer.close()
    assert len(consume_n(kafka_settings, topic, 500)) == 500


def test_ensure_topics_is_idempotent_and_applies_configs(kafka_settings):
    names = TopicNames(prefix=f"idem{time.time_ns()}-")
    specs = default_topics(partitions=3, prefix=names.prefix)
    assert sorted(ensure_topics(kafka_settings, specs)) == sorted(s.name for s in specs)
    assert ensure_topics(kafka_settings, specs) == []

    admin = KafkaAdminClient(**kafka_settings.client_config())
    try:
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, names.models)])
    finally:
        admin.close()
    assert "cleanup.policy" in str(described) and "compact" in str(described)
    with Producer(kafka_settings) as producer:
        assert producer.partitions_for(names.sensors) == {0, 1, 2}
        assert producer.partitions_for(names.models) == {0}
        big = b"x" * (
            5 * 1024 * 1024
        )  # over the broker's 1 MiB default: passes only by the topic's config
        producer.send_and_wait(names.models, big, key="m")


def test_failed_deliveries_are_counted(kafka_settings, topic_factory):
    topic = topic_factory()  # broker default: at most ~1 MiB per record
    with Producer(kafka_settings, message_max_bytes=8 * 1024 * 1024) as producer:
        producer.send(topic, b"small")
        producer.send(topic, b"x" * (3 * 1024 * 1024))
        producer.flush()
        assert producer.failures == 1
        assert "MSG_SIZE_TOO_LARGE" in str(producer.last_error)


def test_send_many_reporting_only_errors_still_counts_failures(kafka_settings, topic_factory):
    """The serving producer's way: batches through send_many, no delivery report for a
    record that arrived, but a lost one is still counted, and waiting on one is refused."""
    topic = topic_factory()
    with Producer(
        kafka_settings, message_max_bytes=8 * 1024 * 1024, delivery_report_only_error=True
    ) as producer:
        producer.send_many(topic, [b"%d" % i for i in range(100)], [f"k{i}" for i in range(100)])
        producer.send_many(topic, [b"y" * (3 * 1024 * 1024)], [None])
        producer.flush()
        assert producer.failures == 1 and "MSG_SIZE_TOO_LARGE" in str(producer.last_error)
        with pytest.raises(RuntimeError, match="delivery reports"):
            producer.send_and_wait(topic, b"one")
    got = consume_n(kafka_settings, topic, 100)
    assert sorted(int(m.value) for m in got) == list(range(100))
    assert {m.key for m in got} == {b"k%d" % i for i in range(100)}


def test_connect_waits_for_the_idempotent_producer_id(kafka_settings, topic_factory):
    """connect() returns once librdkafka reports the producer id (else it raises after its
    timeout), so a latency-critical sender's first record is not held back."""
    topic = topic_factory()
    producer = Producer(kafka_settings)
    assert not producer.ready  # idempotent: no producer id before it connects
    with producer.connect(timeout_s=20):
        assert producer.ready
        assert producer.send_and_wait(topic, b"first") == 0


def test_connect_to_no_broker_says_so():
    with pytest.raises(ConfigError, match="is the broker up"):
        Producer(KafkaSettings(bootstrap="127.0.0.1:1")).connect(timeout_s=1)


def test_connect_after_the_first_send_is_refused():
    producer = Producer(KafkaSettings(bootstrap="127.0.0.1:1"))
    assert producer.client is not None  # what the first send does: start the client
    with pytest.raises(RuntimeError, match="before the first send"):
        producer.connect()


def test_a_commit_sent_without_waiting_lands_and_a_refused_one_is_reported(
    kafka_settings, topic_factory
):
    topic, missing = topic_factory(), f"missing-{uuid.uuid4().hex[:8]}"
    with Producer(kafka_settings) as producer:
        producer.send_many(topic, [b"x"] * 3, [None] * 3)
    refused: list[dict] = []
    with Consumer(kafka_settings, [topic], group_id=f"g-{topic}") as consumer:
        consumer.on_commit_failed(refused.append)
        got: list[Message] = []
        while len(got) < 3:
            got += consumer.poll(timeout_ms=200)
        consumer.commit({(topic, 0): 3}, wait=False)
        consumer.commit({(missing, 0): 1}, wait=False)  # the broker has no such partition
        deadline = time.monotonic() + 30
        while not refused and time.monotonic() < deadline:
            consumer.poll(timeout_ms=100)  # outcomes arrive inside poll()
        assert consumer.committed(topic, [0]) == {0: 3}
    assert refused == [{(missing, 0): 1}]
