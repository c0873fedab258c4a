"""Raw Kafka hop floor: produce -> consume latency of ~200-byte records with the wrapper's defaults.

Open-loop: records leave on schedule at ``--rate`` msg/s whatever the broker does; the
consumer runs in its own process and records receive time - send time (both wall clock).
``measure_floor`` is reused by other benches so every later latency has a floor from the
same run beside it.

    python bench/kafka_floor.py --bootstrap 127.0.0.1:9092 --count 10000 --rate 1000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import struct
import time
import uuid

import numpy as np

from schemas.kafka import Consumer, KafkaSettings, Producer, ensure_topics
from schemas.topics import TopicSpec

PAYLOAD_BYTES = 200
_STAMP = struct.Struct("<q")


def _consume(bootstrap: str, topic: str, count: int, out: mp.Queue, ready: mp.Event) -> None:
    settings = KafkaSettings(bootstrap=bootstrap)
    latencies = np.empty(count, dtype=np.int64)
    seen = 0
    with Consumer(settings, [topic], group_id=f"floor-{topic}", auto_offset_reset="latest") as c:
        while not c.assignment():
            c.poll(timeout_ms=50)
        ready.set()
        deadline = time.monotonic() + 600
        while seen < count and time.monotonic() < deadline:
            for m in c.poll(timeout_ms=100):
                now = time.time_ns()
                if m.value.startswith(b"warm") or seen == count:
                    continue
                latencies[seen] = now - _STAMP.unpack_from(m.value)[0]
                seen += 1
    out.put(latencies[:seen].tolist())


def measure_floor(bootstrap: str, count: int = 10_000, rate: float = 1000.0) -> dict[str, float]:
    """p50/p99/max one-hop latency in ms of ``count`` records sent at ``rate`` per second."""
    settings = KafkaSettings(bootstrap=bootstrap)
    topic = f"floor-{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, [TopicSpec(name=topic, partitions=1)])
    ctx = mp.get_context("spawn")
    out, ready = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_consume, args=(bootstrap, topic, count, out, ready))
    proc.start()
    ready.wait(60)
    time.sleep(0.5)
    padding = b"\0" * (PAYLOAD_BYTES - _STAMP.size)
    with Producer(settings) as producer:
        producer.send_and_wait(topic, b"warm" + padding)  # connect before timing
        start = time.perf_counter()
        for i in range(count):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            producer.send(topic, _STAMP.pack(time.time_ns()) + padding, key=b"k")
    lat_ms = np.asarray(out.get(timeout=600), dtype=np.float64) / 1e6
    proc.join(30)
    return {
        "count": float(len(lat_ms)),
        "p50_ms": float(np.percentile(lat_ms, 50)),
        "p99_ms": float(np.percentile(lat_ms, 99)),
        "max_ms": float(lat_ms.max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = [measure_floor(args.bootstrap, args.count, args.rate) for _ in range(args.runs)]
    for r in runs:
        print(json.dumps(r))
    print(
        json.dumps(
            {
                "median_p50_ms": float(np.median([r["p50_ms"] for r in runs])),
                "median_p99_ms": float(np.median([r["p99_ms"] for r in runs])),
                "runs": len(runs),
            }
        )
    )


if __name__ == "__main__":
    main()
