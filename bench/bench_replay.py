"""Replayer benchmark: throughput at --speed max and schedule lag at fixed rates.

    .venv/bin/python bench/bench_replay.py --bootstrap 127.0.0.1:9092

Creates a uuid-named 4-partition topic, replays a simulated fleet into it and prints the
median of ``--runs`` runs for each setting. Needs a running broker.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ingest.replayer import ReplayConfig, Replayer, ReplaySummary
from ingest.simulator import SimConfig, simulate
from schemas.kafka import BOOTSTRAP_ENV, KafkaSettings, ensure_topics
from schemas.topics import TopicSpec


def run(log, settings: KafkaSettings, topic: str, **kw) -> ReplaySummary:  # type: ignore[no-untyped-def]
    config = ReplayConfig(topic=topic, progress=False, **kw)
    return Replayer(log, config, settings=settings).run()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get(BOOTSTRAP_ENV, "127.0.0.1:9092"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each paced run")
    parser.add_argument("--max-frames", type=int, default=50_000, help="frames of the max run")
    args = parser.parse_args()
    settings = KafkaSettings(bootstrap=args.bootstrap)
    topic = f"bench-replay-{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, [TopicSpec(name=topic, partitions=4)])
    log, _ = simulate(SimConfig(vehicles=20, duration_s=600.0, seed=0))
    print(f"log: {log.num_rows} frames of 20 vehicles; topic {topic} (4 partitions)")

    maxes = [
        run(log, settings, topic, speed="max", max_frames=args.max_frames) for _ in range(args.runs)
    ]
    rates = [s.achieved_rate for s in maxes]
    print(
        f"--speed max: {statistics.median(rates):,.0f} frames/s median of {args.runs} "
        f"(runs: {', '.join(f'{r:,.0f}' for r in rates)}; {args.max_frames} frames each, "
        f"errors {sum(s.errors for s in maxes)})"
    )
    for rate in (1_000.0, 10_000.0):
        frames = int(rate * args.seconds)
        runs = [run(log, settings, topic, rate=rate, max_frames=frames) for _ in range(args.runs)]
        p50 = statistics.median(s.lag_p50_ms or 0.0 for s in runs)
        p99 = statistics.median(s.lag_p99_ms or 0.0 for s in runs)
        achieved = statistics.median(s.achieved_rate for s in runs)
        print(
            f"--rate {rate:,.0f}: schedule lag p50 {p50:.3f} ms, p99 {p99:.3f} ms "
            f"(median of {args.runs} runs of {frames} frames; achieved {achieved:,.0f} frames/s; "
            f"p99 per run: {', '.join(f'{s.lag_p99_ms:.3f}' for s in runs)}; "
            f"errors {sum(s.errors for s in runs)})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
