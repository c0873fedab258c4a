"""Sensor codec cost: encode + decode (with validation) per frame, one and ten per record.

    .venv/bin/python bench/bench_codec.py

No broker needed (``--bootstrap`` is accepted for symmetry with the other benches).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ingest.simulator import SimConfig, simulate
from schemas.sensor import decode_frames, encode_frames, frame_headers, table_to_frames


def per_frame_us(fn, frames: int, repeat: int) -> float:  # type: ignore[no-untyped-def]
    """Median over ``repeat`` timings of ``fn()``, in microseconds per frame."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / frames * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", default=None, help="unused")
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    log, _ = simulate(SimConfig(vehicles=4, duration_s=args.frames / 40 + 1))
    frames = table_to_frames(log)[: args.frames]
    n = len(frames)
    values = [encode_frames([f]) for f in frames]
    batches = [frames[i : i + 10] for i in range(0, n, 10)]
    batch_values = [encode_frames(b) for b in batches]

    rows = {
        "encode, 1 frame/record": lambda: [encode_frames([f]) for f in frames],
        "decode+validate, 1 frame/record": lambda: [decode_frames(v) for v in values],
        "decode (no validation), 1/record": lambda: [decode_frames(v, False) for v in values],
        "headers (stamp), per record": lambda: [frame_headers(i) for i in range(n)],
        "encode, 10 frames/record": lambda: [encode_frames(b) for b in batches],
        "decode+validate, 10 frames/record": lambda: [decode_frames(v) for v in batch_values],
    }
    print(f"sensor codec, {n} frames, median of {args.repeat} (value {len(values[0])} bytes)")
    cost = {}
    for name, fn in rows.items():
        cost[name] = per_frame_us(fn, n, args.repeat)
        print(f"  {name:<36} {cost[name]:7.2f} us/frame")
    total = cost["encode, 1 frame/record"] + cost["decode+validate, 1 frame/record"]
    print(f"  encode+decode (validated), 1/record   {total:7.2f} us/frame")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
