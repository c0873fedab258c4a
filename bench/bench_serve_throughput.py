"""Serving throughput on a backlog: frames answered per second by one InferenceService.

Each run fills fresh uuid-prefixed topics with ``--frames`` sensor records (one frame each,
``--vehicles`` vehicles at 10 Hz, t_produce stamped at send), publishes a constant-velocity
ONNX model on `models`, then serves that backlog in this process (main thread, so cProfile
sees the loop) with a huge budget, so every frame takes the path it would take without
lateness; ``--budget-ms 0.001`` makes every frame stale instead, which measures the overload
path (answer at once by fallback). Throughput = predictions / (last t_published - first
t_published), read back from the predictions topic, which is also checked for exactly one
answer per frame.

    .venv/bin/python bench/bench_serve_throughput.py --bootstrap HOST:PORT [--runs 3]
        [--frames 30000] [--budget-ms MS] [--profile out.pstats] [--package-root DIR]

``--package-root DIR`` imports ``inference`` from DIR (e.g. a copy of an older version) so
two versions can be compared on the same broker in the same session. ``--profile`` adds one
profiled run (not in the median) and prints the serving loop's top entries by tottime.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import pstats
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _paths(package_root: str | None) -> None:
    if package_root:
        sys.path.insert(0, package_root)
    sys.path.insert(1 if package_root else 0, str(ROOT))


def fill(settings, topic: str, frames: int, vehicles: int) -> None:  # type: ignore[no-untyped-def]
    """Produce ``frames`` records of one valid frame each, round-robin over vehicles."""
    import synthetic

    from schemas.headers import now_ns
    from schemas.kafka import Producer
    from schemas.sensor import encode_frames, frame_headers

    with Producer(settings, linger_ms=5) as p:
        for i in range(frames):
            f = synthetic.frame(i, vehicles, heading_step=0.2, turning_yaw_rate=0.01)
            p.send(topic, encode_frames([f]), key=f.vehicle_id, headers=frame_headers(now_ns()))


def publish_model(settings, topic: str):  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT / "tests"))
    from model_fixtures import cv_onnx, envelope

    from schemas.envelope import encode_envelope, envelope_headers
    from schemas.kafka import Producer

    env = envelope(cv_onnx(), 1)
    with Producer(settings) as p:
        p.send(topic, encode_envelope(env), key=env.name, headers=envelope_headers())
    return env


def read_back(settings, topic: str, expected: int) -> dict:  # type: ignore[no-untyped-def]
    """Every prediction on ``topic``: count, duplicates, sources, publish time span."""
    from schemas.kafka import Consumer
    from schemas.prediction import decode_prediction

    c = Consumer(settings, group_id=None)
    c.assign(topic, sorted(c.partitions_for(topic)))
    seen: set[tuple[str, int]] = set()
    count, first, last = 0, None, None
    sources: dict[str, int] = {}
    deadline = time.monotonic() + 60
    while count < expected and time.monotonic() < deadline:
        for m in c.poll(timeout_ms=200, max_records=5000):
            p = decode_prediction(m.value)
            count += 1
            seen.add((p.vehicle_id, p.seq))
            key = p.source if p.source == "model" else f"fallback:{p.reason}"
            sources[key] = sources.get(key, 0) + 1
            t = p.t_published_ns
            first = t if first is None or t < first else first
            last = t if last is None or t > last else last
    c.close()
    span_s = ((last or 0) - (first or 0)) / 1e9
    return {
        "predictions": count,
        "distinct": len(seen),
        "sources": sources,
        "span_s": round(span_s, 3),
        "frames_per_s": round((count - 1) / span_s) if span_s > 0 else None,
    }


def one_run(args: argparse.Namespace, profile: bool) -> dict:
    from inference.config import ServeConfig
    from inference.service import InferenceService
    from schemas.kafka import KafkaSettings, ensure_topics
    from schemas.topics import default_topics
    from tests.model_fixtures import trusting_test_key

    prefix = f"bench-{uuid.uuid4().hex[:8]}-"
    settings = KafkaSettings(bootstrap=args.bootstrap)
    ensure_topics(settings, default_topics(args.partitions, prefix))
    t0 = time.monotonic()
    fill(settings, prefix + "sensors", args.frames, args.vehicles)
    env = publish_model(settings, prefix + "models")
    fill_s = time.monotonic() - t0
    config = ServeConfig(
        bootstrap=args.bootstrap,
        topic_prefix=prefix,
        group_id=f"bench-{uuid.uuid4().hex[:8]}",
        budget_ms=args.budget_ms,
        log_level="WARNING",
        gate=False,  # measure the model path: the bench's model is CV, which physics ties
    )
    svc = InferenceService(config, settings)
    svc.swapper.configure_trust(trusting_test_key())  # publish_model signs with the test key
    # the model is built before serving starts, so the backlog meets the steady-state path;
    # the watcher then finds the same v1 on `models` and skips it as not newer
    if svc.swapper.offer(env) is None:
        raise SystemExit("the benchmark model was rejected")

    def answered() -> bool:
        s = svc.stats
        return s["model"] + s["fallback"] >= args.frames

    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    svc.run(until=answered)
    if prof:
        prof.disable()
        prof.dump_stats(args.profile)
    out = read_back(settings, prefix + "predictions", args.frames)
    out["fill_s"] = round(fill_s, 1)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--frames", type=int, default=30_000)
    parser.add_argument("--vehicles", type=int, default=32)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--budget-ms",
        type=float,
        default=1e9,
        help="latency budget; the default answers by model, 0.001 makes every frame stale",
    )
    parser.add_argument("--profile", default="", help="write pstats of the last run here")
    parser.add_argument("--package-root", default="", help="import `inference` from here")
    args = parser.parse_args()
    _paths(args.package_root or None)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.ERROR)
    import inference

    print(f"inference from {Path(inference.__file__).parent}", flush=True)
    rates = []
    for i in range(args.runs):
        r = one_run(args, profile=False)
        print(f"run {i + 1}: {r}", flush=True)
        if r["predictions"] != args.frames or r["distinct"] != args.frames:
            print("ERROR: not every frame answered exactly once", file=sys.stderr)
            return 1
        rates.append(r["frames_per_s"])
    print(f"median frames/s over {args.runs} runs: {statistics.median(rates)}")
    if args.profile:  # an extra run: profiling slows the loop, so it is not in the median
        print(f"profiled run: {one_run(args, profile=True)}", flush=True)
        pstats.Stats(args.profile).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
