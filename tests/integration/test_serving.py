"""The inference service against the real broker: one answer per frame, swaps, groups."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable

import pytest

from inference.config import ServeConfig
from inference.service import InferenceService
from schemas.deadletter import decode_dead_letter
from schemas.envelope import encode_envelope, envelope_headers
from schemas.headers import now_ns
from schemas.kafka import Consumer, KafkaSettings, Producer
from schemas.prediction import Prediction, check_prediction_headers, decode_prediction
from schemas.sensor import SensorFrame, encode_frames, frame_headers
from schemas.topics import TopicNames
from tests.model_fixtures import cv_onnx, envelope

pytestmark = pytest.mark.integration

DT_NS = 100_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frame(vid: int, seq: int, t0: int = 1_000_000_000) -> SensorFrame:
    heading = math.remainder(0.1 * vid, 2 * math.pi)
    t = seq * DT_NS / 1e9
    return SensorFrame(
        f"veh-{vid}",
        seq,
        t0 + seq * DT_NS,
        10 * t * math.cos(heading),
        10 * t * math.sin(heading),
        10.0,
        heading,
        0.0,
        0.0,
    )


def send_frames(producer: Producer, topic: str, vehicles: range, seqs: range) -> int:
    n = 0
    for seq in seqs:
        for v in vehicles:
            f = frame(v, seq)
            producer.send(
                topic, encode_frames([f]), key=f.vehicle_id, headers=frame_headers(now_ns())
            )
            n += 1
    producer.flush()
    return n


def publish_model(settings: KafkaSettings, topic: str, version: int, **kw: float) -> None:
    env = envelope(cv_onnx(**kw), version)
    with Producer(settings) as p:
        p.send(topic, encode_envelope(env), key=env.name, headers=envelope_headers())


def wait_for(cond: Callable[[], bool], timeout_s: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Collector:
    """Reads `predictions` from the start on a background thread."""

    def __init__(self, settings: KafkaSettings, topic: str) -> None:
        self.preds: list[Prediction] = []
        self._stop = threading.Event()
        self._consumer = Consumer(settings, group_id=None)
        wait_for(lambda: bool(self._consumer.partitions_for(topic)), 30, f"{topic} metadata")
        self._consumer.assign(topic, sorted(self._consumer.partitions_for(topic)))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for m in self._consumer.poll(timeout_ms=100):
                check_prediction_headers(m.headers)
                self.preds.append(decode_prediction(m.value))

    def wait(self, n: int, timeout_s: float = 60.0) -> list[Prediction]:
        wait_for(
            lambda: len(self.preds) >= n, timeout_s, f"{n} predictions, have {len(self.preds)}"
        )
        time.sleep(0.5)  # anything extra (a duplicate) would arrive now
        return list(self.preds)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._consumer.close()


def config(topics: TopicNames, **kw) -> ServeConfig:
    base = {"topic_prefix": topics.prefix, "group_id": f"{topics.prefix}serve", "max_batch": 16}
    return ServeConfig(**{**base, **kw})


def keys(preds: list[Prediction]) -> Counter:
    return Counter((p.vehicle_id, p.seq) for p in preds)


def test_fallback_first_then_model_one_answer_per_frame(kafka_settings, topics: TopicNames):
    port = free_port()
    cfg = config(topics, metrics_port=port, metrics_host="127.0.0.1", budget_ms=2000)
    collector = Collector(kafka_settings, topics.predictions)
    service = InferenceService(cfg, kafka_settings).start()
    try:
        with Producer(kafka_settings) as producer:
            n1 = send_frames(producer, topics.sensors, range(6), range(12))
            producer.send(topics.sensors, b"\x01\x00garbage", key="x", headers=frame_headers(1))
            producer.send(topics.sensors, encode_frames([frame(0, 99)]), key="veh-0")  # no headers
            bad = SensorFrame("veh-bad", 1, 1, 0.0, 0.0, -3.0, 0.0, 0.0, 0.0)
            producer.send(topics.sensors, encode_frames([bad]), headers=frame_headers(now_ns()))
            producer.flush()
            first = collector.wait(n1)
            publish_model(kafka_settings, topics.models, 1)
            wait_for(lambda: service.model is not None, what="model v1 to serve")
            n2 = send_frames(producer, topics.sensors, range(6), range(12, 24))
        preds = collector.wait(n1 + n2)
        health = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz"))
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    finally:
        service.stop()
        collector.close()

    assert set(keys(preds).values()) == {1} and len(preds) == n1 + n2
    assert all(p.source == "fallback" and p.reason == "no_model" for p in first)
    assert {p.model_name for p in first} == {"cv"}
    later = [p for p in preds if p.seq >= 12]
    assert all(p.source == "model" and p.model_version == 1 for p in later), Counter(
        (p.source, p.reason) for p in later
    )
    for p in preds:
        assert p.t_produce_ns <= p.t_consumed_ns <= p.t_infer_start_ns <= p.t_infer_end_ns
        assert p.t_infer_end_ns <= p.t_published_ns
    # straight-line vehicles: the CV model and the fallback agree with the geometry
    p = later[0]
    f = frame(int(p.vehicle_id.split("-")[1]), p.seq)
    assert p.pred_x[-1] == pytest.approx(f.x + 30 * math.cos(f.heading), abs=1e-3)

    with Consumer(kafka_settings, group_id=None) as c:
        c.assign(topics.deadletter, [0])
        dead = []
        wait_for(lambda: dead.extend(c.poll(timeout_ms=200)) or len(dead) >= 3, what="deadletters")
    reasons = sorted(decode_dead_letter(m.value).reason for m in dead)
    assert len(dead) == 3 and any("speed" in r for r in reasons), reasons
    assert health["ok"] and health["model_version"] == 1
    assert "drivestream_inference_model_version 1.0" in metrics
    assert 'drivestream_inference_fallbacks_total{reason="no_model"}' in metrics


def test_swap_under_load_misses_no_budget(kafka_settings, topics: TopicNames):
    budget_ms = 250.0  # generous: the 2-core CI box is shared; the bench measures 50 ms
    cfg = config(topics, budget_ms=budget_ms)
    publish_model(kafka_settings, topics.models, 1)
    collector = Collector(kafka_settings, topics.predictions)
    service = InferenceService(cfg, kafka_settings).start()
    total = 0
    try:
        wait_for(lambda: service.model is not None, what="model v1")
        wait_for(lambda: len(service.assigned) == 4, what="partitions assigned")
        with Producer(kafka_settings) as producer:
            # connections, metadata and fetch positions first: the budget is about serving
            total += send_frames(producer, topics.sensors, range(100, 116), range(1))
            collector.wait(total)
            for seq in range(40):  # 8 vehicles at 10 Hz each, 4 s
                if seq == 15:
                    publish_model(kafka_settings, topics.models, 2, offset_m=0.1)
                total += send_frames(producer, topics.sensors, range(8), range(seq, seq + 1))
                time.sleep(0.1)
        preds = collector.wait(total)
    finally:
        service.stop()
        collector.close()
    assert len(preds) == total and set(keys(preds).values()) == {1}
    assert service.stats["swaps"] == 2
    versions = {p.model_version for p in preds if p.source == "model"}
    assert versions == {1, 2}
    timed = [p for p in preds if p.vehicle_id not in {f"veh-{v}" for v in range(100, 116)}]
    # The service owns the time after it consumed a frame. Frames that reached it with at
    # least half their budget left (a shared CI box can stall the Kafka hop) must make it.
    budget_ns = budget_ms * 1e6
    ours = [p for p in timed if p.t_consumed_ns - p.t_produce_ns < budget_ns / 2]
    assert len(ours) >= 0.8 * len(timed)
    late = [p for p in ours if p.t_published_ns - p.t_produce_ns > budget_ns]
    assert not late, f"{len(late)} predictions past the {budget_ms} ms budget: " + str(
        [(p.seq, p.source, p.reason, (p.t_consumed_ns - p.t_produce_ns) // 10**6) for p in late[:5]]
    )


def test_two_instances_split_partitions_and_answer_once(kafka_settings, topics: TopicNames):
    cfg = config(topics, budget_ms=2000)
    collector = Collector(kafka_settings, topics.predictions)
    a = InferenceService(cfg, kafka_settings).start()
    b = None
    try:
        wait_for(lambda: len(a.assigned) == 4, what="instance A to own all partitions")
        with Producer(kafka_settings) as producer:
            n1 = send_frames(producer, topics.sensors, range(16), range(15))
            collector.wait(n1)
            b = InferenceService(cfg, kafka_settings).start()  # rebalance mid-stream
            wait_for(lambda: len(b.assigned) > 0 and len(a.assigned) < 4, what="a rebalance")
            n2 = send_frames(producer, topics.sensors, range(16), range(15, 30))
        preds = collector.wait(n1 + n2)
        assert {p for _, p in a.assigned} | {p for _, p in b.assigned} == {0, 1, 2, 3}
    finally:
        a.stop()
        if b is not None:
            b.stop()
        collector.close()
    counts = keys(preds)
    assert len(counts) == n1 + n2 and set(counts.values()) == {1}, [
        k for k, c in counts.items() if c > 1
    ][:5]
    assert b.stats["fallback"] > 0 and a.stats["fallback"] > n1
