"""The hostile-input suite (issue 11): the real parameter server, trainer and serving on the
real broker while a simulated fleet streams, with 10,000 seeded bad records mixed into
`sensors` and 100 into `models` (and junk on the trainer's `ps-updates`).

No service exits; every good frame is answered exactly once; every bad record is in
`deadletter` with its reason; the trainer's sample count keeps growing after the burst; the
model serving is one the parameter server signed.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from inference.service import InferenceService
from ingest.simulator import SimConfig, simulate
from schemas.deadletter import decode_dead_letter
from schemas.envelope import decode_envelope
from schemas.headers import now_ns
from schemas.kafka import Consumer, KafkaSettings, Message, Producer
from schemas.prediction import Prediction, decode_prediction
from schemas.sensor import SensorFrame, encode_frames, frame_headers, table_to_frames
from schemas.signing import TrustedKeys, key_id, read_public_keys
from schemas.topics import TopicNames
from tests.hostile import Hostile
from tests.integration.test_serving import config, keys, serving
from tests.integration.test_training import end_offset, start, wait_for

pytestmark = pytest.mark.integration

N_BAD_SENSORS = 10_000
N_BAD_MODELS = 100
N_BAD_UPDATES = 20
SPEEDUP = 2.0
BURST = (0.2, 0.6)
"""The bad records go in while this fraction of the good stream is sent."""


def read_topic(settings: KafkaSettings, topic: str) -> list[Message]:
    """Every record of ``topic`` up to its end offsets now."""
    out: list[Message] = []
    with Consumer(settings, group_id=None) as c:
        wait_for(topic, lambda: c.partitions_for(topic), 30, [], Path("."))
        c.assign(topic, sorted(c.partitions_for(topic)))
        end = c.end_offsets()
        deadline = time.monotonic() + 60
        while not c.reached(end) and time.monotonic() < deadline:
            out.extend(c.poll(timeout_ms=200, max_records=5000))
    return out


def stream(
    settings: KafkaSettings,
    topics: TopicNames,
    frames: list[SensorFrame],
    hostile: Hostile,
    progress: dict[str, float],
    trusted_id: str,
) -> None:
    """Send the good frames in sensor time (x SPEEDUP) and the bad records during BURST."""
    t0_event, t0_wall = frames[0].t_event_ns, time.monotonic()
    lo, hi = (int(len(frames) * f) for f in BURST)
    span = hi - lo
    models_every = span // N_BAD_MODELS
    with Producer(settings) as p:
        for i, f in enumerate(frames):
            due = (f.t_event_ns - t0_event) / 1e9 / SPEEDUP - (time.monotonic() - t0_wall)
            if due > 0:
                time.sleep(due)
            p.send(topics.sensors, encode_frames([f]), f.vehicle_id, frame_headers(now_ns()))
            if lo <= i < hi:
                k = i - lo  # spread N_BAD_SENSORS evenly, exactly
                for _ in range((k + 1) * N_BAD_SENSORS // span - k * N_BAD_SENSORS // span):
                    p.send(topics.sensors, *hostile.sensor(f))
                    progress["bad_sensors"] += 1
                if (i - lo) % models_every == 0 and progress["bad_models"] < N_BAD_MODELS:
                    p.send(topics.models, *hostile.model(trusted_id))
                    progress["bad_models"] += 1
                if (i - lo) % (span // N_BAD_UPDATES) == 0:
                    p.send(topics.ps_updates, hostile.rng.randbytes(64), b"x", [])
            if i == hi:
                progress["burst_end"] = time.monotonic()
    progress["done"] = time.monotonic()


def test_no_record_stops_a_service_and_only_signed_models_serve(
    kafka_settings: KafkaSettings, topics: TopicNames, tmp_path: Path
) -> None:
    boot = kafka_settings.bootstrap
    logs = tmp_path / "logs.txt"
    common = ["--bootstrap", boot, "--topic-prefix", topics.prefix, "--status-every-s", "5"]
    ps = start(
        ["trainer.ps", *common, "--checkpoint-dir", str(tmp_path / "ps"),
         "--registry-dir", str(tmp_path / "registry"), "--export-every-s", "2"],
        logs, boot,
    )  # fmt: skip
    train = start(
        ["trainer", "train", *common, "--nproc", "1", "--checkpoint-dir", str(tmp_path / "tr")],
        logs,
        boot,
    )
    procs = [ps, train]
    pub = tmp_path / "ps" / "ps-drivestream-mlp.pub"
    service: InferenceService | None = None
    try:
        wait_for("the signing key", pub.exists, 60, procs, logs)
        # the trainer is up once its rank has pushed its first (empty) delta
        first_delta = lambda: end_offset(kafka_settings, topics.ps_updates)  # noqa: E731
        wait_for("the trainer", first_delta, 120, procs, logs)
        cfg = config(topics, budget_ms=5000, gate=True, trusted_keys=(),
                     trusted_key_files=(str(pub),))  # fmt: skip
        service = serving(cfg, kafka_settings)
        (ps_key,) = read_public_keys(pub)
        trusted_id = key_id(ps_key)
        table, _ = simulate(SimConfig(vehicles=8, duration_s=80.0, seed=3))
        frames = table_to_frames(table)
        hostile = Hostile(seed=11)
        progress = {"bad_sensors": 0.0, "bad_models": 0.0}
        sender = threading.Thread(
            target=stream,
            args=(kafka_settings, topics, frames, hostile, progress, trusted_id),
            daemon=True,
        )
        sender.start()
        wait_for("the burst", lambda: "burst_end" in progress, 120, procs, logs)
        samples_at_burst_end = newest_samples(kafka_settings, topics, pub)
        wait_for("the stream's end", lambda: "done" in progress, 120, procs, logs)
        wait_for(
            "training to go on after the burst",
            lambda: newest_samples(kafka_settings, topics, pub) > samples_at_burst_end + 500,
            60,
            procs,
            logs,
        )
        wait_for(
            "every good frame answered",
            lambda: (
                service is not None
                and service.stats["model"] + service.stats["fallback"] >= len(frames)
            ),
            60,
            procs,
            logs,
        )
        assert service.error is None and service._thread is not None
        assert service._thread.is_alive(), "serve stopped"
        assert [p.poll() for p in procs] == [None, None], f"a trainer service exited: {logs}"
        serving_model = service.model
    finally:
        if service is not None:
            service.stop()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=60) for p in procs]
    assert codes == [0, 0], f"clean exit on SIGTERM; logs in {logs}"
    assert progress["bad_sensors"] == N_BAD_SENSORS and progress["bad_models"] == N_BAD_MODELS
    assert min(hostile.kinds.values()) > 0, hostile.kinds

    # every good frame answered exactly once, and nothing else answered
    preds = [decode_prediction_value(m) for m in read_topic(kafka_settings, topics.predictions)]
    good = {(f.vehicle_id, f.seq) for f in frames}
    answered = keys(preds)
    assert set(answered) == good and set(answered.values()) == {1}

    # every bad record is a dead letter with its reason
    good_values = {encode_frames([f]) for f in frames}
    bad_sensors = {
        (m.partition, m.offset)
        for m in read_topic(kafka_settings, topics.sensors)
        if m.value not in good_values
    }
    bad_models = {(m.partition, m.offset) for m in read_topic(kafka_settings, topics.models)
                  if not m.headers or not _signed_by(m, pub)}  # fmt: skip
    assert len(bad_sensors) == N_BAD_SENSORS and len(bad_models) == N_BAD_MODELS
    dead = [decode_dead_letter(m.value) for m in read_topic(kafka_settings, topics.deadletter)]
    assert all(d.reason for d in dead)
    by_topic: dict[str, set] = {topics.sensors: set(), topics.models: set()}
    for d in dead:
        by_topic.setdefault(d.source_topic, set()).add((d.partition, d.offset))
    assert by_topic[topics.sensors] == bad_sensors
    assert bad_models <= by_topic[topics.models]

    # the model serving is one the parameter server signed
    assert serving_model is not None
    legit = {
        env.version: env
        for m in read_topic(kafka_settings, topics.models)
        if m.headers and (env := _signed_by(m, pub)) is not None
    }
    assert serving_model.version in legit


def _signed_by(msg: Message, pub: Path):
    """The envelope in ``msg`` if the parameter server's key signed it, else None."""
    try:
        env = decode_envelope(msg.value)
        TrustedKeys(read_public_keys(pub)).verify(env)
    except Exception:  # anything else is one of the bad records
        return None
    return env


def newest_samples(settings: KafkaSettings, topics: TopicNames, pub: Path) -> int:
    """Samples seen by the newest model the parameter server exported (forged envelopes
    claim what they like)."""
    envs = [_signed_by(m, pub) for m in read_topic(settings, topics.models) if m.headers]
    return max((env.samples for env in envs if env is not None), default=0)


def decode_prediction_value(msg: Message) -> Prediction:
    return decode_prediction(msg.value)
