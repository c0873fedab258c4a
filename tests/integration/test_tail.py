"""`drivestream tail` on the real broker: every topic's records as valid JSON lines."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from schemas.kafka import Producer
from tests import wire_vectors

pytestmark = pytest.mark.integration

VECTORS = wire_vectors.load()
TOPICS = sorted({v["topic"] for v in VECTORS.values()})


def tail_cmd(kafka_settings, topics, topic: str, *flags: str) -> list[str]:
    return [
        sys.executable, "-m", "pipeline.cli", "tail", topic,
        "--bootstrap", kafka_settings.bootstrap, "--topic-prefix", topics.prefix, *flags,
    ]  # fmt: skip


def produce_vector(producer: Producer, topics, stem: str) -> None:
    v = VECTORS[stem]
    hdrs = [(h["key"], None if h["hex"] is None else bytes.fromhex(h["hex"])) for h in v["headers"]]
    key = None if v["key"] is None else bytes.fromhex(v["key"]["hex"])
    producer.send(topics.prefix + v["topic"], bytes.fromhex(v["value_hex"]), key=key, headers=hdrs)


def test_tail_prints_every_topics_records_as_json_and_junk_as_base64(
    kafka_settings, topics
) -> None:
    with Producer(kafka_settings) as producer:
        for stem in sorted(VECTORS):
            produce_vector(producer, topics, stem)
        for topic in TOPICS:
            producer.send(topics.prefix + topic, b"\x00junk\xff", key=b"junk", partition=0)
    for topic in TOPICS:
        run = subprocess.run(
            tail_cmd(kafka_settings, topics, topic, "--from-beginning"),
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        lines = [json.loads(line) for line in run.stdout.splitlines()]
        expected = {s: v for s, v in VECTORS.items() if v["topic"] == topic}
        assert len(lines) == len(expected) + 1, run.stdout
        good = [o for o in lines if "error" not in o]
        (junk,) = [o for o in lines if "error" in o]
        assert junk["key"] == "junk" and junk["value"] == {"base64": "AGp1bmv/"}
        assert sorted(o["schema"] for o in good) == sorted(v["schema"] for v in expected.values())
        for o in good:
            assert o["topic"] == topics.prefix + topic and o["offset"] >= 0
            assert o["timestamp_ms"] > 1_600_000_000_000 and o["headers"][0][0] == "ds-schema"
            if topic == "predictions":
                assert o["value"] in [v["record"] for v in expected.values()]


def test_tail_counts_and_follows_new_records(kafka_settings, topics) -> None:
    with Producer(kafka_settings) as producer:
        produce_vector(producer, topics, "prediction")
        produce_vector(producer, topics, "prediction-json")
    once = subprocess.run(
        tail_cmd(kafka_settings, topics, "predictions", "--from-beginning", "--count", "1"),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert once.returncode == 0 and len(once.stdout.splitlines()) == 1
    # live: without --from-beginning only new records count; produce until tail has seen 2
    live = subprocess.Popen(
        tail_cmd(kafka_settings, topics, "predictions", "--count", "2"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 90
    with Producer(kafka_settings) as producer:
        while live.poll() is None and time.monotonic() < deadline:
            produce_vector(producer, topics, "prediction-fallback")
            producer.flush()
            time.sleep(0.3)
    out, err = live.communicate(timeout=30)
    assert live.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 2 and {o["value"]["source"] for o in lines} == {"fallback"}


def test_tail_from_the_beginning_follows_past_the_end_with_follow(kafka_settings, topics) -> None:
    with Producer(kafka_settings) as producer:
        produce_vector(producer, topics, "sensor-frame")
    follow = subprocess.Popen(
        tail_cmd(kafka_settings, topics, "sensors", "--from-beginning", "--follow", "--count", "3"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert follow.stdout is not None
    first = json.loads(follow.stdout.readline())  # the old record, then it waits at the end
    assert first["value"]["frames"][0]["vehicle_id"] == "car-1" and follow.poll() is None
    with Producer(kafka_settings) as producer:
        produce_vector(producer, topics, "sensor-frames-gnss")
        produce_vector(producer, topics, "sensor-frame")
    out, err = follow.communicate(timeout=60)
    assert follow.returncode == 0, err
    assert [len(json.loads(line)["value"]["frames"]) for line in out.splitlines()] == [2, 1]
