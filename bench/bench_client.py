"""Kafka client cost per record: kafka-python vs librdkafka (confluent-kafka) vs our wrapper.

Each run produces ``--count`` records of 91 bytes with two headers, keyed over 64 keys, to a
fresh 4-partition topic with each client, then consumes them back; it reports µs per record
of the caller's loop (produce: send every record and flush, with a producer already connected
and idempotent as ours are; consume: from the first record returned to the last). Medians of
``--runs``.

    .venv/bin/python bench/bench_client.py --bootstrap 127.0.0.1:9092 [--count 30000] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import confluent_kafka
import kafka

from schemas.kafka import Consumer, KafkaSettings, Producer, ensure_topics
from schemas.topics import TopicSpec

VALUE = b"x" * 91
HEADERS = [("ds-schema", b"sensor_frame/1"), ("ds-t-produce-ns", b"\0" * 8)]
KEYS = [b"veh-%d" % i for i in range(64)]


def timed(fn: Callable[[], int]) -> float:
    t0 = time.perf_counter()
    n = fn()
    return (time.perf_counter() - t0) / n * 1e6


def kafka_python(bootstrap: str, topic: str, count: int) -> tuple[float, float]:
    p = kafka.KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    p.send(topic, b"warm").get(timeout=30)  # connected, metadata known: not timed

    def produce() -> int:
        for i in range(count):
            p.send(topic, VALUE, key=KEYS[i % 64], headers=HEADERS)
        p.flush()
        p.close()
        return count

    c = kafka.KafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    c.assign([kafka.TopicPartition(topic, p) for p in range(4)])
    prod = timed(produce)
    got, t0 = 0, 0.0
    count += 1  # the warm-up record
    while got < count:
        batch = c.poll(timeout_ms=1000, max_records=5000)
        records = [r for rs in batch.values() for r in rs]
        if records and not t0:
            t0, first = time.perf_counter(), len(records)
        for r in records:
            _ = (r.value, r.key, r.headers)
        got += len(records)
    cons = (time.perf_counter() - t0) / max(1, got - first) * 1e6
    c.close()
    return prod, cons


def librdkafka(bootstrap: str, topic: str, count: int) -> tuple[float, float]:
    p = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0, "enable.idempotence": True}
    )
    p.produce(topic, b"warm")
    p.flush(30)

    def produce() -> int:
        for i in range(count):
            p.produce(topic, VALUE, KEYS[i % 64], headers=HEADERS)
            p.poll(0)
        p.flush()
        return count

    c = confluent_kafka.Consumer(
        {"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex, "enable.auto.commit": False}
    )
    c.assign([confluent_kafka.TopicPartition(topic, p, 0) for p in range(4)])
    prod = timed(produce)
    got, t0 = 0, 0.0
    count += 1
    while got < count:
        records = c.consume(min(5000, count - got), 1.0)  # never wait for records not there
        if records and not t0:
            t0, first = time.perf_counter(), len(records)
        for r in records:
            _ = (r.value(), r.key(), r.headers())
        got += len(records)
    cons = (time.perf_counter() - t0) / max(1, got - first) * 1e6
    c.close()
    return prod, cons


def wrapper(bootstrap: str, topic: str, count: int) -> tuple[float, float]:
    settings = KafkaSettings(bootstrap=bootstrap)

    p = Producer(settings).connect()
    p.send_and_wait(topic, b"warm")

    def produce() -> int:
        for i in range(count):
            p.send(topic, VALUE, key=KEYS[i % 64], headers=HEADERS)
        p.flush()
        return count

    c = Consumer(settings, group_id=None)
    c.assign(topic, range(4), dict.fromkeys(range(4), 0))
    prod = timed(produce)
    got, t0 = 0, 0.0
    count += 1
    while got < count:
        msgs = c.poll(timeout_ms=1000, max_records=5000)
        if msgs and not t0:
            t0, first = time.perf_counter(), len(msgs)
        got += len(msgs)
    cons = (time.perf_counter() - t0) / max(1, got - first) * 1e6
    c.close()
    return prod, cons


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--count", type=int, default=30_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    settings = KafkaSettings(bootstrap=args.bootstrap)
    results: dict[str, list[tuple[float, float]]] = {}
    for _ in range(args.runs):
        for name, fn in [("kafka-python", kafka_python), ("librdkafka", librdkafka),
                         ("drivestream wrapper", wrapper)]:  # fmt: skip
            topic = f"client-{uuid.uuid4().hex[:8]}"
            ensure_topics(settings, [TopicSpec(name=topic, partitions=4)])
            results.setdefault(name, []).append(fn(args.bootstrap, topic, args.count))
    for name, runs in results.items():
        prod = statistics.median(r[0] for r in runs)
        cons = statistics.median(r[1] for r in runs)
        print(f"{name:20s} produce {prod:6.2f} µs/record  consume {cons:6.2f} µs/record "
              f"(runs: {[(round(a, 1), round(b, 1)) for a, b in runs]})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
