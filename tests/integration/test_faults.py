"""Faults (issue 12): the broker dies and comes back, a trainer rank is killed.

Real broker, real processes (`ps`, `train`), serving in process. Each test asserts that no
service exits, every frame is answered (duplicates only as at-least-once allows: a frame
answered but not committed before the fault), no accepted parameter update is lost (an
offline replay of ps-updates reproduces the server's checkpoint bit for bit), training
resumes, and no process is left behind. Waits are on conditions, never on timing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from inference.service import InferenceService
from ingest.simulator import SimConfig, simulate
from pipeline.broker import BrokerConfig, LocalBroker
from pipeline.processes import check_java, free_port
from schemas.errors import ConfigError
from schemas.kafka import KafkaSettings, ensure_topics
from schemas.model_spec import DEFAULT_SPEC
from schemas.prediction import decode_prediction
from schemas.sensor import SensorFrame, table_to_frames
from schemas.topics import TopicNames, default_topics
from tests.e2e.test_up import processes_mentioning
from tests.integration.test_hostile_suite import read_topic
from tests.integration.test_serving import config, keys, serving
from tests.integration.test_training import (
    end_offset,
    read_all,
    send_in_sensor_time,
    start,
    wait_for,
)
from trainer import wire
from trainer.checkpoint import read_if_exists
from trainer.config import PSConfig
from trainer.launch import _children
from trainer.model import build_model, trainable_state
from trainer.server_state import ServerState

pytestmark = pytest.mark.integration

SPEEDUP = 2.0
MODEL = "drivestream-mlp"


def fleet(vehicles: int, duration_s: float, seed: int) -> list[SensorFrame]:
    table, _ = simulate(SimConfig(vehicles=vehicles, duration_s=duration_s, seed=seed))
    return table_to_frames(table)


def stream(settings: KafkaSettings, topic: str, frames: list[SensorFrame], sent: list) -> None:
    """Send ``frames`` in sensor time x SPEEDUP; the producer holds them while the broker is
    away (librdkafka retries within message.timeout.ms). ``sent`` ends with the count of
    failed deliveries (an int)."""
    sent.append(send_in_sensor_time(settings, topic, frames, SPEEDUP, sent))


def services(boot: str, topics: TopicNames, tmp_path: Path, nproc: int) -> list:
    logs = tmp_path / "logs.txt"
    common = ["--bootstrap", boot, "--topic-prefix", topics.prefix, "--status-every-s", "5"]
    ps = start(
        ["trainer.ps", *common, "--checkpoint-dir", str(tmp_path / "ps"),
         "--registry-dir", str(tmp_path / "registry"), "--export-every-s", "2",
         "--checkpoint-every-s", "1"],
        logs, boot,
    )  # fmt: skip
    train = start(
        ["trainer", "train", *common, "--nproc", str(nproc), "--sync-every-steps", "10",
         "--checkpoint-dir", str(tmp_path / "train")],
        logs, boot,
    )  # fmt: skip
    return [ps, train]


def stop_all(procs: list[subprocess.Popen], service: InferenceService | None) -> list[int]:
    if service is not None:
        service.stop()
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    return [p.wait(timeout=90) for p in procs]


def assert_no_update_lost(settings: KafkaSettings, topics: TopicNames, tmp_path: Path) -> None:
    """An offline replay of ps-updates through the same merge gives the server's final
    checkpoint bit for bit: every accepted update is in it, none twice."""
    v0 = trainable_state(build_model(DEFAULT_SPEC, PSConfig().hidden, 0))
    final = ServerState(v0, max_staleness=8)
    raw = read_if_exists(tmp_path / "ps" / f"ps-{MODEL}.ckpt")
    assert raw is not None
    final.load_bytes(raw)
    offline = ServerState(dict(v0), max_staleness=8)
    for msg in read_all(settings, topics.ps_updates, upto=final.updates_offset):
        offline.apply(wire.decode_delta(msg.value), msg.offset)
    assert (offline.version, offline.accepted) == (final.version, final.accepted)
    for k, w in final.weights.items():
        np.testing.assert_array_equal(offline.weights[k], w)


def assert_every_frame_answered(
    settings: KafkaSettings, topics: TopicNames, frames: list[SensorFrame]
) -> int:
    """Every frame answered; returns the duplicates (at-least-once allows them)."""
    answered = keys([decode_prediction(m.value) for m in read_topic(settings, topics.predictions)])
    good = {(f.vehicle_id, f.seq) for f in frames}
    assert set(answered) == good, f"{len(good - set(answered))} frames never answered"
    return sum(answered.values()) - len(answered)


@pytest.fixture(params=[1, 3], ids=["one-broker", "three-brokers"])
def own_broker(request, tmp_path: Path):
    """A broker (or a 3-node cluster) of this test's own: node 1 gets killed."""
    try:
        check_java()
    except ConfigError as exc:
        pytest.skip(f"the broker-outage test runs its own local broker: {exc}")
    # one broker comes back on the port it was given; a cluster's nodes on their saved ones
    port = free_port() if request.param == 1 else 0
    config = BrokerConfig(
        data_dir=tmp_path / "broker", port=port, heap_mb=384, brokers=request.param
    )
    broker = LocalBroker(config)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_every_service_rides_out_a_broker_outage(own_broker: LocalBroker, tmp_path: Path):
    """One broker: the whole cluster is gone for a while. Three: one node is (topics have
    three replicas and min.insync.replicas 2, so writes go on once it is fenced)."""
    boot = own_broker.bootstrap
    settings = KafkaSettings.from_env(bootstrap=boot)
    topics = TopicNames("outage-")
    ensure_topics(settings, default_topics(prefix=topics.prefix))
    logs = tmp_path / "logs.txt"
    procs = services(boot, topics, tmp_path, nproc=1)
    service: InferenceService | None = None
    frames = fleet(6, 60.0, seed=5)
    sent: list[SensorFrame] = []
    try:
        wait_for("the trainer", lambda: end_offset(settings, topics.ps_updates), 180, procs, logs)
        cfg = config(topics, gate=False, trusted_keys=(), allow_unsigned=True)
        service = serving(cfg, settings)
        sender = threading.Thread(
            target=stream, args=(settings, topics.sensors, frames, sent), daemon=True
        )
        sender.start()
        wait_for("a third of the stream", lambda: len(sent) > len(frames) // 3, 120, procs, logs)
        pushes_before = wait_for(
            "pushes", lambda: max(0, end_offset(settings, topics.ps_updates) - 1), 60, procs, logs
        )

        own_broker.kill_node(1)  # kill -9: no clean shutdown, no flush
        time.sleep(10)  # every client notices: sends queue, pushes fail, sessions expire
        own_broker.start()  # the node again, on its ports and data

        sender.join(timeout=180)
        assert not sender.is_alive() and sent[-1] == 0, "every frame delivered"
        wait_for(
            "every frame answered",
            lambda: (
                service is not None
                and service.stats["model"] + service.stats["fallback"] >= len(frames)
            ),
            120,
            procs,
            logs,
        )
        wait_for(
            "training to resume",
            lambda: end_offset(settings, topics.ps_updates) > pushes_before + 5,
            120,
            procs,
            logs,
        )
        assert service.error is None and service._thread is not None
        assert service._thread.is_alive(), "serve stopped"
        assert [p.poll() for p in procs] == [None, None], f"a service exited; logs in {logs}"
    finally:
        codes = stop_all(procs, service)
    assert codes == [0, 0], f"clean exit on SIGTERM; logs in {logs}"
    assert_every_frame_answered(settings, topics, frames)
    assert_no_update_lost(settings, topics, tmp_path)
    assert processes_mentioning(str(tmp_path / "train")) == []


def test_a_killed_rank_is_restarted_and_training_resumes(
    kafka_settings: KafkaSettings, topics: TopicNames, tmp_path: Path
) -> None:
    logs = tmp_path / "logs.txt"
    procs = services(kafka_settings.bootstrap, topics, tmp_path, nproc=2)
    frames = fleet(6, 90.0, seed=6)
    sent: list[SensorFrame] = []
    try:
        wait_for(
            "the trainer", lambda: end_offset(kafka_settings, topics.ps_updates), 180, procs, logs
        )
        threading.Thread(
            target=stream, args=(kafka_settings, topics.sensors, frames, sent), daemon=True
        ).start()
        pushes = wait_for(
            "pushes", lambda: max(0, end_offset(kafka_settings, topics.ps_updates) - 3), 90,
            procs, logs,
        )  # fmt: skip
        ranks = [r for t in _children(procs[1].pid) for r in _children(t)]
        assert len(ranks) == 2, ranks
        os.kill(ranks[1], signal.SIGKILL)
        wait_for(
            "a new group",
            lambda: {r for t in _children(procs[1].pid) for r in _children(t)} - set(ranks),
            120,
            procs,
            logs,
        )
        wait_for(
            "training to resume",
            lambda: end_offset(kafka_settings, topics.ps_updates) > pushes + 5,
            180,
            procs,
            logs,
        )
        assert [p.poll() for p in procs] == [None, None], f"a service exited; logs in {logs}"
    finally:
        codes = stop_all(procs, None)
    assert codes == [0, 0], f"clean exit on SIGTERM; logs in {logs}"
    assert "restart 1/" in logs.read_text()
    assert_no_update_lost(kafka_settings, topics, tmp_path)
    assert processes_mentioning(str(tmp_path / "train")) == []
