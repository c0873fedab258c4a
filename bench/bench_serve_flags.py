"""A/B of `serve` flag sets on one broker, alternating, with the floor before each round.

Each round measures the floor (and with ``--peer`` the quixstreams peer), then every flag
set once (the order reversed every other round, so no set always runs right after the
floor), with ``bench_peer.measure_rate``: the same load, stages and CPU figures as the peer
bench. One broker for all keeps broker state from deciding the comparison.

    python bench/bench_serve_flags.py --rate 1000 --duration 30 --runs 3 [--peer] \
        '' '--max-in-flight 2'
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import bench_peer as bp  # bench/ is on sys.path as a script; bench_e2e adds the repo root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("flag_sets", nargs="+", help="serve flags per variant ('' = defaults)")
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--peer", action="store_true", help="also the quixstreams peer, each round")
    p.add_argument("--json", default="", help="write every measurement here")
    args = p.parse_args()
    # the peer bench's defaults (budget, batch, model, device)
    systems = "floor,serve,peer" if args.peer else "floor,serve"
    peer_args = bp.parse_args(["--systems", systems, "--duration", str(args.duration)])
    bp.exit_cleanly_on_signals()
    others = ["floor", "peer"] if args.peer else ["floor"]
    rows: list[dict] = []
    with bp.open_bench(peer_args) as b:
        bp.measure_rate(b, "floor", args.rate, 10)  # the broker's JIT, discarded
        for run in range(1, args.runs + 1):
            order = args.flag_sets if run % 2 else args.flag_sets[::-1]
            for system, flags in [(s, None) for s in others] + [("serve", f) for f in order]:
                peer_args.serve_flags = flags or ""
                row = bp.measure_rate(b, system, args.rate)
                row = {"run": run, "flags": flags, **row}
                rows.append(row)
                name = system if flags is None else f"serve [{flags}]"
                stages = row.get("stage_p50_ms", "")
                print(
                    f"run {run} {name}: p50 {row['p50_ms']} p99 {row['p99_ms']} ms, "
                    f"CPU {row['cpu_s_per_10k']} s/10k, fallback {row['fallback_share']} "
                    f"{stages}",
                    flush=True,
                )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
