"""The serving job of `drivestream serve` written as a quixstreams application: the peer
that bench/bench_peer.py measures beside serve and the two-hop floor.

It does what a competent quixstreams user would write for the same job: consume
``sensors`` (the project's wire format, decoded and validated by ``schemas.sensor``), keep
each vehicle's last ``history`` frames, run the same ONNX model with ONNX Runtime (CPU) on
the window (``schemas.window.window_rows``, the layout serve and the trainer share; a
window with a gap wider than ``max_gap_s`` never goes to the model) and produce one
prediction per frame in ``schemas.prediction``'s binary layout, keyed by vehicle id, on
``predictions``. A vehicle's first ``history - 1`` frames, and windows with a gap, are
answered from the newest frame by constant velocity (source ``fallback``, reason
``warmup``/``gap``, as serve labels them), so every frame gets exactly one answer.

How it is tuned (it runs in its own virtualenv, which bench_peer.py builds):

- quixstreams runs the dataframe once per record and has no micro-batching across
  records (its batching sinks flush on the commit interval, seconds: no use for a
  latency-bound job), so the model runs with batch 1 on every frame. The session is
  warmed up before the app starts and reused; the input is one small array per frame.
- ONNX Runtime as serve sets it: 1 intra-op thread, sequential, full graph optimisation,
  no spinning (ORT's defaults spin a thread per core, which burns a shared 2-core box).
- producer: ``linger.ms=2``. With the model unbatchable, the producer is the one place
  quixstreams lets frames share work. At 0 ms (serve's setting; serve's micro-batches hand
  the producer up to 64 answers at once) nearly every prediction went out in its own
  request. One short sweep (0, 2, 5 ms; 6 s per rate on the shared, noisy 2-core box) had
  2 ms cut the peer's CPU per frame by about a third and the broker's by half at
  5,000-10,000 frames/s, with no worse p99 at 1,000/s; 5 ms (librdkafka's default) bought
  nothing more. acks=all with idempotence (quixstreams enforces it; serve uses the same),
  no compression.
- consumer: ``fetch.wait.max.ms=20``, ``fetch.min.bytes=1`` (serve's), offsets from
  the earliest; commits every 1 s (serve's interval; quixstreams' default is 5 s).
- history lives in a dict in memory, as serve's does. quixstreams' State would put it in
  RocksDB with a changelog topic (one more Kafka write per frame) for a recovery serve
  does not do either (it rebuilds history after a restart), so memory keeps the work equal.

    python bench/peer/quix_serve.py --bootstrap HOST:PORT --sensors T --predictions T
        --model model.onnx [--group G]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import deque
from pathlib import Path

import numpy as np
import onnxruntime as ort
from quixstreams import Application

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo's schemas

from schemas.errors import CodecError, ValidationError
from schemas.headers import now_ns
from schemas.kinematics import predict_cv
from schemas.model_spec import DEFAULT_SPEC, INPUT_NAME, OUTPUT_NAME
from schemas.prediction import PredictionEncoder, prediction_headers
from schemas.sensor import SensorFrame, check_frame_headers, decode_frames
from schemas.window import has_gap, window_rows

log = logging.getLogger("quix_serve")


def session(path: str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


class Predictor:
    """Per-vehicle windows in, encoded predictions out."""

    def __init__(self, sess: ort.InferenceSession, version: int, name: str) -> None:
        self.sess, self.version, self.spec = sess, version, DEFAULT_SPEC
        self.history: dict[str, deque[tuple[float, ...]]] = {}
        self.enc = PredictionEncoder()
        self.model_mid = self.enc.middle(name, "model", "")
        self.fallback_mid = {r: self.enc.middle("cv", "fallback", r) for r in ("warmup", "gap")}
        x = np.zeros((1, self.spec.history, len(self.spec.features)), np.float32)
        for _ in range(20):  # warm up: the first real frame pays no setup
            self.sess.run([OUTPUT_NAME], {INPUT_NAME: x})

    def __call__(self, value: bytes, key: object, timestamp: int, headers: object) -> list[bytes]:
        t_consumed = now_ns()
        try:
            t_produce = check_frame_headers(headers)  # type: ignore[arg-type]
            frames = decode_frames(value)
        except (CodecError, ValidationError) as exc:
            log.warning("skipped a bad record: %s", exc)
            return []
        return [self.answer(f, t_produce, t_consumed) for f in frames]

    def answer(self, f: SensorFrame, t_produce: int, t_consumed: int) -> bytes:
        rows = self.history.get(f.vehicle_id)
        if rows is None:
            rows = self.history[f.vehicle_id] = deque(maxlen=self.spec.history)
        rows.append((f.t_event_ns, f.x, f.y, f.speed, f.heading, f.yaw_rate, f.accel))
        horizons = self.spec.horizons_s
        t0 = now_ns()
        if len(rows) < self.spec.history:
            why = "warmup"
        elif has_gap([r[0] for r in rows], self.spec.max_gap_s):
            why = "gap"
        else:
            out = self.sess.run([OUTPUT_NAME], {INPUT_NAME: window_rows(rows)[None]})[0][0]
            return self.encode(f, self.model_mid, self.version, out, (t_produce, t_consumed, t0))
        out = predict_cv(f.x, f.y, f.speed, f.heading, horizons)[0]
        return self.encode(f, self.fallback_mid[why], -1, out, (t_produce, t_consumed, t0))

    def encode(
        self,
        f: SensorFrame,
        mid: bytes,
        version: int,
        out: np.ndarray,
        stamps: tuple[int, int, int],
    ) -> bytes:
        t_end = now_ns()
        return self.enc.encode(
            f.vehicle_id,
            f.seq,
            f.t_event_ns,
            version,
            mid,
            (*stamps, t_end, t_end),  # t_published: quixstreams produces right after
            self.spec.horizons_s,
            out[:, 0].tolist(),
            out[:, 1].tolist(),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--sensors", required=True, help="input topic")
    parser.add_argument("--predictions", required=True, help="output topic")
    parser.add_argument("--model", required=True, help="ONNX file")
    parser.add_argument("--model-version", type=int, default=1)
    parser.add_argument("--model-name", default="drivestream")
    parser.add_argument("--group", default="quix-serve")
    parser.add_argument("--linger-ms", type=float, default=2.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    predictor = Predictor(session(args.model), args.model_version, args.model_name)
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        commit_interval=1.0,
        consumer_extra_config={"fetch.wait.max.ms": 20, "fetch.min.bytes": 1},
        producer_extra_config={"linger.ms": args.linger_ms, "compression.type": "none"},
        loglevel="WARNING",
        auto_create_topics=False,  # the benchmark made them, as `drivestream topics` does
        use_changelog_topics=False,
    )
    sensors = app.topic(args.sensors, value_deserializer="bytes", key_deserializer="bytes")
    predictions = app.topic(args.predictions, value_serializer="bytes", key_serializer="bytes")
    headers = prediction_headers()
    sdf = app.dataframe(sensors)
    sdf = sdf.apply(predictor, metadata=True, expand=True)
    sdf = sdf.set_headers(lambda value, key, timestamp, old: headers)
    sdf.to_topic(predictions)
    app.run()  # quixstreams handles SIGINT/SIGTERM: it stops, commits and closes


if __name__ == "__main__":
    main()
