"""Streaming training on the real broker: 2 DDP ranks + the parameter server.

A simulated fleet is replayed into ``sensors`` at 4x real time. The server is killed with
SIGKILL mid-stream and restarted: its version must continue, and an offline replay of the
whole ps-updates log through the same merge must reproduce its final weights bit for bit
(no accepted update lost) and reject none of the deltas (trainers hold pushes back while
the server is down instead of queueing a backlog that replays stale). Models appear on
``models`` and the online FDE at 3 s on the holdout vehicles ends below constant velocity's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ingest.simulator import SimConfig, simulate
from schemas.envelope import decode_envelope
from schemas.headers import now_ns
from schemas.kafka import Consumer, KafkaSettings, Producer
from schemas.model_spec import DEFAULT_SPEC
from schemas.sensor import SensorFrame, encode_frames, frame_headers, table_to_frames
from schemas.signing import TrustedKeys, read_public_keys
from trainer import wire
from trainer.checkpoint import read_if_exists
from trainer.config import PSConfig
from trainer.model import build_model, trainable_state
from trainer.server_state import ServerState

pytestmark = pytest.mark.integration

SPEEDUP = 4.0
REPO = Path(__file__).resolve().parents[2]


def start(args: list[str], log: Path, bootstrap: str) -> subprocess.Popen:
    env = {**os.environ, "DRIVESTREAM_BOOTSTRAP": bootstrap, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def end_offset(settings: KafkaSettings, topic: str) -> int:
    with Consumer(settings) as c:
        return c.watermarks(topic, 0)[1]


def read_all(settings: KafkaSettings, topic: str, upto: int | None = None) -> list:
    upto = end_offset(settings, topic) if upto is None else upto
    out: list = []
    with Consumer(settings) as c:
        c.assign(topic, [0], {0: 0})
        deadline = time.monotonic() + 30
        while len(out) < upto and time.monotonic() < deadline:
            out.extend(m for m in c.poll(200) if m.offset < upto)
    return sorted(out, key=lambda m: m.offset)


def wait_for(what: str, cond, timeout_s: float, procs: list[subprocess.Popen], logs: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        dead = [p.args for p in procs if p.poll() is not None]
        if dead:
            pytest.fail(f"{dead} exited while waiting for {what}; logs in {logs}")
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}; logs in {logs}")


def send_in_sensor_time(
    settings: KafkaSettings,
    topic: str,
    frames: list[SensorFrame],
    speedup: float,
    sent: list | None = None,
) -> int:
    """Send ``frames`` one per record at their sensor times / ``speedup`` (appending each
    to ``sent``); returns how many deliveries failed."""
    t0_event, t0_wall = frames[0].t_event_ns, time.monotonic()
    with Producer(settings) as producer:
        for f in frames:
            due = (f.t_event_ns - t0_event) / 1e9 / speedup - (time.monotonic() - t0_wall)
            if due > 0:
                time.sleep(due)
            producer.send(
                topic, encode_frames([f]), key=f.vehicle_id, headers=frame_headers(now_ns())
            )
            if sent is not None:
                sent.append(f)
        producer.flush(60.0)
        return producer.failures


def replay_fleet(settings: KafkaSettings, topic: str, done: threading.Event) -> None:
    table, _truth = simulate(SimConfig(vehicles=24, duration_s=100.0, seed=7))
    send_in_sensor_time(settings, topic, table_to_frames(table), SPEEDUP)
    done.set()


def test_two_ranks_and_server_survive_kill_and_beat_cv(kafka_settings, topics, tmp_path) -> None:
    boot = kafka_settings.bootstrap
    logs = tmp_path / "logs.txt"
    common = ["--bootstrap", boot, "--topic-prefix", topics.prefix, "--status-every-s", "5"]
    ps_args = [
        "trainer.ps",
        *common,
        "--checkpoint-dir", str(tmp_path / "ps"),
        "--registry-dir", str(tmp_path / "registry"),
        "--checkpoint-every-s", "1",
        "--export-every-s", "1",
    ]  # fmt: skip
    ps = start(ps_args, logs, boot)
    train = start(
        [
            "trainer", "train", *common,
            "--nproc", "2",
            "--checkpoint-dir", str(tmp_path / "train"),
            "--sync-every-steps", "10",
            "--holdout-fraction", "0.25",
        ],
        logs,
        boot,
    )  # fmt: skip
    procs = [ps, train]
    try:
        # both ranks are up once rank 0 has pushed its first (empty) delta
        wait_for(
            "first delta", lambda: end_offset(kafka_settings, topics.ps_updates), 120, procs, logs
        )
        done = threading.Event()
        threading.Thread(
            target=replay_fleet, args=(kafka_settings, topics.sensors, done), daemon=True
        ).start()
        time.sleep(8)
        models = read_all(kafka_settings, topics.models)
        assert models, "the server exports models on a cadence"

        ps.kill()  # kill -9: no chance to checkpoint on the way out
        ps.wait()
        published = read_all(kafka_settings, topics.ps_weights)  # all by the killed server
        before = [wire.decode_weights(m.value).version for m in published]
        ps = start(ps_args, logs, boot)
        procs[0] = ps

        def resumed_versions() -> list[int]:
            ws = read_all(kafka_settings, topics.ps_weights)[len(published) :]
            return [wire.decode_weights(m.value).version for m in ws]

        after = wait_for("weights after restart", resumed_versions, 90, procs, logs)
        assert after[0] >= max(before), "the version continues across kill -9"
        wait_for("end of the stream", done.is_set, 120, procs, logs)
        time.sleep(6)  # the last labels arrive 3 s after the last frames
    finally:
        for p in (train, ps):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=60) for p in (train, ps)]
    assert codes == [0, 0], f"clean exit on SIGTERM; logs in {logs}"

    envelopes = [decode_envelope(m.value) for m in read_all(kafka_settings, topics.models)]
    versions = [e.version for e in envelopes]
    assert versions[-1] > versions[0] and len(set(versions)) >= 3
    last = envelopes[-1]
    last.verify()
    # every export, before and after the kill, is signed by the key made on first start
    trusted = TrustedKeys(read_public_keys(tmp_path / "ps" / f"ps-{last.name}.pub"))
    for env in envelopes:
        trusted.verify(env)
    assert last.samples > 1000 and last.trained_until_ns > 0
    assert (tmp_path / "registry" / f"{last.name}-v{last.version:08d}.onnx").exists()
    m = last.metrics
    assert m["holdout.samples"] > 50
    assert m["holdout.model.fde@3"] < m["holdout.cv.fde@3"], m

    # no accepted update lost: replaying all of ps-updates from v0 gives the final state
    v0 = trainable_state(build_model(DEFAULT_SPEC, PSConfig().hidden, 0))
    final = ServerState(v0, max_staleness=8)
    final.load_bytes(read_if_exists(tmp_path / "ps" / f"ps-{last.name}.ckpt"))
    offline = ServerState(dict(v0), max_staleness=8)
    for msg in read_all(kafka_settings, topics.ps_updates, upto=final.updates_offset):
        offline.apply(wire.decode_delta(msg.value), msg.offset)
    assert offline.version == final.version >= last.version
    # trainers hold their next push until the server processed the previous one, so the
    # deltas pushed while it was down come back as one fresh delta, not a stale backlog
    assert final.rejected == offline.rejected == 0, f"rejected deltas; logs in {logs}"
    for k, w in final.weights.items():
        np.testing.assert_array_equal(offline.weights[k], w)
