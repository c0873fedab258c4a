"""`drivestream broker start --brokers 3`: a three-node KRaft cluster from the same jars,
whose replicated topics lose no acknowledged record when a partition leader is SIGKILLed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from pipeline.broker import BrokerConfig, LocalBroker
from schemas.kafka import Consumer, KafkaSettings, Producer, ensure_topics
from schemas.topics import TopicSpec

pytestmark = pytest.mark.integration

RECORDS = 3_000
KILL_AT = 1_000
PARTITIONS = 4

T = TypeVar("T")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalBroker]:
    """A cluster of its own (not the session broker), stopped whatever the test does."""
    config = BrokerConfig(data_dir=tmp_path / "cluster", port=0, brokers=3, heap_mb=384)
    with LocalBroker(config) as broker:
        yield broker


def wait_for(condition: Callable[[], T], what: str, timeout_s: float = 60.0) -> T:
    """The condition's first truthy value, polled until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what} not within {timeout_s:g}s"
        time.sleep(0.2)
    return value


def jvms(data_dir: Path) -> list[int]:
    """PIDs of live kafka.Kafka JVMs started on a file under ``data_dir``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
            continue
        if b"kafka.Kafka" in cmdline and str(data_dir).encode() in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids


def brokers(admin: AdminClient) -> set[int]:
    return set(admin.list_topics(timeout=10).brokers)


def status(data_dir: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "broker", "status", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)


def test_a_killed_leader_loses_no_acknowledged_record_and_rejoins(cluster: LocalBroker):
    settings = KafkaSettings(bootstrap=cluster.bootstrap)
    admin = AdminClient(settings.rdkafka_config())
    wait_for(lambda: brokers(admin) == {1, 2, 3}, "three brokers in the metadata")

    topic = f"t{uuid.uuid4().hex[:10]}"
    ensure_topics(settings, [TopicSpec(name=topic, partitions=PARTITIONS)])

    def partitions() -> dict:
        """The topic's partitions once the broker asked knows all of them and their leaders
        (each broker learns of a topic a little after the controller made it); else {}."""
        found = admin.list_topics(topic, timeout=10).topics.get(topic)
        parts = {} if found is None else found.partitions
        complete = len(parts) == PARTITIONS and all(p.leader > 0 for p in parts.values())
        return parts if complete else {}

    parts = wait_for(partitions, "a leader for every partition")
    assert [len(p.replicas) for p in parts.values()] == [3] * PARTITIONS

    def configs() -> dict:
        """The topic's configs once the broker asked knows the topic (the admin client asks
        any broker, maybe another than the one that listed it); else {}."""
        resource = ConfigResource(ResourceType.TOPIC, topic)
        try:
            return admin.describe_configs([resource])[resource].result(timeout=10)
        except KafkaException as e:
            if e.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise
            return {}

    assert wait_for(configs, "the topic's configs")["min.insync.replicas"].value == "2"

    victim = parts[0].leader  # leads at least partition 0
    before = cluster.state()
    assert before is not None
    with Producer(settings) as producer:  # acks=all, idempotent: the project's defaults
        producer.connect(timeout_s=30)  # has its producer id: records flow from the first
        for i in range(RECORDS):
            if i == KILL_AT:
                cluster.kill_node(victim)
            producer.send(topic, str(i).encode(), key=str(i))
            if i % 50 == 0:
                time.sleep(0.02)  # ~1.2 s of sending: some acknowledged at the kill, some not
        producer.flush(timeout_s=100)
        assert producer.failures == 0, producer.last_error  # every record was acknowledged

    def taken_over() -> bool:
        part = partitions().get(0)
        return part is not None and part.leader != victim

    wait_for(taken_over, "another leader for partition 0")
    nodes = {n["node_id"]: n["running"] for n in status(cluster.data_dir)["nodes"]}
    assert nodes == {1: True, 2: True, 3: True} | {victim: False}

    with Consumer(settings) as consumer:
        consumer.assign(topic, range(PARTITIONS))
        ends = consumer.end_offsets()
        assert sum(ends.values()) == RECORDS  # no record written twice
        seen: list[int] = []
        deadline = time.monotonic() + 60
        while not consumer.reached(ends) and time.monotonic() < deadline:
            seen += [int(m.value) for m in consumer.poll(timeout_ms=500)]
    assert sorted(seen) == list(range(RECORDS))  # every one readable, exactly once

    after = cluster.start()  # brings the dead node back, on its ports
    assert after.node(victim).port == before.node(victim).port
    assert after.node(victim).pid != before.node(victim).pid
    wait_for(lambda: brokers(admin) == {1, 2, 3}, "the restarted node in the metadata")

    def in_sync() -> bool:
        parts = partitions()
        return bool(parts) and all(victim in p.isrs for p in parts.values())

    wait_for(in_sync, f"node {victim} back in every partition's in-sync replicas")

    assert cluster.stop()
    assert jvms(cluster.data_dir) == []
