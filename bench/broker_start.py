"""Local broker start time with jars cached: fresh data dir (format + start) and restart.

python bench/broker_start.py --runs 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from pipeline.broker import BrokerConfig, LocalBroker
from pipeline.kafka_jars import ensure_jars


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    ensure_jars()
    fresh, restart = [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            broker = LocalBroker(BrokerConfig(data_dir=Path(tmp), port=0))
            t0 = time.perf_counter()
            broker.start()
            fresh.append(time.perf_counter() - t0)
            broker.stop()
            t0 = time.perf_counter()
            broker.start()
            restart.append(time.perf_counter() - t0)
            broker.stop()
    print(json.dumps({"fresh_s": fresh, "restart_s": restart}))
    print(
        json.dumps(
            {
                "median_fresh_s": statistics.median(fresh),
                "median_restart_s": statistics.median(restart),
                "runs": args.runs,
            }
        )
    )


if __name__ == "__main__":
    main()
