"""Hostile input and signed models: what they cost serving.

1. Good-traffic latency of `python -m inference` with and without 10,000 bad records a
   minute mixed into `sensors` (junk values, bad frame counts, truncations, non-finite
   numbers, bad headers: :data:`tests.hostile.JUNK_KINDS`; sent by a process of their own),
   in one run: rounds alternate clean and hostile, each on a fresh service and fresh
   topics of one broker, and the medians of the rounds are reported.
2. Checking a model's signature (:meth:`schemas.signing.TrustedKeys.verify`) on the
   parameter server's real export, beside decoding the envelope and building its session.

    python bench/bench_hostile.py [--bootstrap HOST:PORT] [--rate 1000] [--duration 15]
                                  [--rounds 3] [--bad-per-min 10000]

Without --bootstrap a local broker (pipeline.broker) is started for the run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bench_e2e  # noqa: E402  (bench/ is on sys.path when run as a script)
import synthetic  # noqa: E402

from pipeline.processes import free_port  # noqa: E402
from schemas.kafka import KafkaSettings, Producer, ensure_topics  # noqa: E402
from schemas.topics import TopicNames, default_topics  # noqa: E402
from tests.hostile import JUNK_KINDS, Hostile  # noqa: E402


def bad_worker(bootstrap: str, topic: str, per_s: float) -> None:
    """A process of its own: send junk records at ``per_s`` until killed (pre-built, so the
    generator's cost does not slow the sending), then print how many."""
    settings = KafkaSettings(bootstrap=bootstrap)
    hostile = Hostile(seed=5, sensor_kinds=JUNK_KINDS)
    records = [hostile.sensor(synthetic.frame(i, 8, heading_step=0.01)) for i in range(2000)]
    sent, t0 = 0, time.monotonic()
    with Producer(settings).connect() as p:
        print("ready", flush=True)
        try:
            while True:
                due = int((time.monotonic() - t0) * per_s)
                while sent < due:
                    p.send(topic, *records[sent % len(records)])
                    sent += 1
                time.sleep(0.01)
        except KeyboardInterrupt:
            print(sent, flush=True)


def one_round(bootstrap: str, hostile: bool, args: argparse.Namespace) -> dict:
    """A fresh service on fresh topics; good load, with junk alongside when ``hostile``."""
    settings = KafkaSettings(bootstrap=bootstrap)
    names = TopicNames(prefix=f"benchhostile{uuid.uuid4().hex[:8]}-")
    ensure_topics(settings, default_topics(4, names.prefix))
    bench_e2e.publish_model(settings, names.models, bench_e2e.model_record(1))
    port = free_port()
    serve = bench_e2e.start_serve(bootstrap, names.prefix, port, args)
    bad = None
    try:
        bench_e2e.wait_health(port, serve)
        if hostile:
            bad = subprocess.Popen(
                [sys.executable, __file__, "--bad-worker", "--bootstrap", bootstrap,
                 "--topic", names.sensors, "--bad-per-min", str(args.bad_per_min)],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert bad.stdout is not None
            bad.stdout.readline()
        res = bench_e2e.load(settings, names.sensors, names.predictions, args.rate, args.duration)
        if bad is not None:
            bad.send_signal(signal.SIGINT)
            assert bad.stdout is not None
            res["bad_sent"] = int(bad.stdout.readline() or 0)
            bad.wait(10)
        metrics = bench_e2e.scrape(port)
    finally:
        if bad is not None and bad.poll() is None:
            bad.kill()
        serve.terminate()
        serve.wait(30)
    dead = re.search(r"^drivestream_inference_deadletters_total (\S+)$", metrics, re.M)
    res["deadletters"] = int(float(dead.group(1))) if dead else 0
    return res


def latency_rounds(bootstrap: str, args: argparse.Namespace) -> dict:
    rounds: dict[str, list[dict]] = {"clean": [], "hostile": []}
    for _ in range(args.rounds):
        for mode in ("clean", "hostile"):
            res = one_round(bootstrap, mode == "hostile", args)
            rounds[mode].append(res)
            print(mode, json.dumps(res), flush=True)
    return {
        "rate": args.rate,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "p99_ms": {m: statistics.median(r["p99_ms"] for r in rs) for m, rs in rounds.items()},
        "p50_ms": {m: statistics.median(r["p50_ms"] for r in rs) for m, rs in rounds.items()},
        "p99_each_ms": {m: [r["p99_ms"] for r in rs] for m, rs in rounds.items()},
        "answered_all": all(r["answered"] >= r["sent"] for rs in rounds.values() for r in rs),
        "bad_sent": [r["bad_sent"] for r in rounds["hostile"]],
        "deadletters": [r["deadletters"] for r in rounds["hostile"]],
    }


def signature_cost(repeats: int = 200) -> dict:
    """Median µs to verify, decode and build a signed envelope of the real model."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from inference.runtime import build_session
    from schemas.envelope import decode_envelope, encode_envelope
    from schemas.model_spec import DEFAULT_SPEC
    from schemas.signing import TrustedKeys, sign_envelope
    from tests.model_fixtures import envelope
    from trainer.export import OnnxExporter
    from trainer.model import build_model, trainable_state

    model = build_model(DEFAULT_SPEC, 64, 0)
    onnx_bytes = OnnxExporter(model, DEFAULT_SPEC).export(trainable_state(model))
    key = Ed25519PrivateKey.generate()
    env = sign_envelope(envelope(onnx_bytes, 1, key=None), key)
    value = encode_envelope(env)
    trusted = TrustedKeys([key.public_key()])

    def median_us(fn) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e6)
        return round(statistics.median(times), 1)

    return {
        "onnx_bytes": len(onnx_bytes),
        "verify_us": median_us(lambda: trusted.verify(env)),
        "decode_us": median_us(lambda: decode_envelope(value)),
        "session_build_us": median_us(lambda: build_session(onnx_bytes, "cpu")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default=os.environ.get("DRIVESTREAM_BOOTSTRAP"))
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bad-per-min", type=float, default=10_000)
    parser.add_argument("--budget-ms", type=float, default=50.0)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bad-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bad_worker:
        bad_worker(args.bootstrap, args.topic, args.bad_per_min / 60)
        return
    print("signature", json.dumps(signature_cost()), flush=True)
    with contextlib.ExitStack() as stack:
        bootstrap = args.bootstrap
        if not bootstrap:
            from pipeline.broker import BrokerConfig, LocalBroker

            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            broker = stack.enter_context(LocalBroker(BrokerConfig(data_dir=Path(tmp), port=0)))
            bootstrap = broker.bootstrap
        print("latency", json.dumps(latency_rounds(bootstrap, args)), flush=True)


if __name__ == "__main__":
    main()
