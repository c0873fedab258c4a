"""The never-worse gate's judging, and how long it keeps the serving loop waiting.

    .venv/bin/python bench/bench_gate.py [--truth 4096] [--repeat 15]

The gate judges once a second on the model watcher's thread; whatever that holds the GIL
for, the serving loop waits for (up to the interpreter's switch interval, 5 ms, at a time).
A fleet is driven through a HistoryStore one frame per poll (as serve sees it at a low
rate) until the truth ring is full, then ``gate.judge`` runs ``--repeat`` times while a
second thread, standing in for the serving loop, sleeps 0.2 ms at a time and records how
late it woke; the store is first moved out of the collector's reach, as serve does.
Reported: the judge's wall time (median, max) and the stand-in's lateness (p99 and max)
with the judge running and without. No broker needed.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_e2e adds the repo root

import bench_e2e as e2e

from inference.gate import GatePolicy, PredictorGate
from inference.history import HistoryStore
from inference.metrics import ServeMetrics
from inference.runtime import LoadedModel, build_session
from schemas.envelope import decode_envelope
from schemas.model_spec import InputSpec
from schemas.sensor import SensorFrame

TICK_S = 0.0002


class Ticker(threading.Thread):
    """Sleeps TICK_S at a time and records how much later than that it woke (ms)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.late_ms: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t0 = time.perf_counter()
            time.sleep(TICK_S)
            self.late_ms.append((time.perf_counter() - t0 - TICK_S) * 1e3)


def lateness(work, seconds: float) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(p99, max) lateness of a Ticker while ``work()`` runs, repeated for ``seconds``."""
    ticker = Ticker()
    ticker.start()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        work()
    ticker.stop.set()
    ticker.join()
    late = sorted(ticker.late_ms)
    return late[int(0.99 * (len(late) - 1))], late[-1]


def fill(spec: InputSpec, truth: int, vehicles: int) -> tuple[HistoryStore, list[float]]:
    """A store whose truth ring is full, fed one frame per poll; its clock is the fleet's."""
    now = [0.0]
    store = HistoryStore(spec, truth_capacity=truth, truth_every=2, clock=lambda: now[0])
    seq = 0
    while len(store.truth()[0]) < truth:
        for v in range(vehicles):
            t_ns = seq * 100_000_000
            x = 10.0 * seq * 0.1
            frame = SensorFrame(f"veh-{v:03d}", seq, t_ns, x, float(v), 10.0, 0.0, 0.0, 0.0)
            store.add_frame(frame, 0)
        seq += 1
        now[0] = seq * 0.1
    return store, now


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--truth", type=int, default=4096, help="serve's --truth-capacity")
    parser.add_argument("--vehicles", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    env = decode_envelope(e2e.model_record(1))
    session, provider = build_session(env.onnx, "cpu", 1)
    model = LoadedModel(envelope=env, session=session, provider=provider)
    t0 = time.perf_counter()
    store, now = fill(env.input_spec, args.truth, args.vehicles)
    print(f"filled {len(store.truth()[0])} truth windows in {time.perf_counter() - t0:.1f} s")
    gc.collect()
    gc.freeze()  # as serve does once started: what start-up made is not walked again
    gate = PredictorGate(
        GatePolicy(window_s=1e9, short_window_s=1e9),  # judge on all of it
        store.scored_truth,
        lambda: store.spec.horizons_s,
        ServeMetrics(),
        score=store.score_awaiting,
        clock=lambda: now[0],
    )
    gate.judge(model)  # first touch of the arrays
    walls = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        gate.judge(model)
        walls.append((time.perf_counter() - t) * 1e3)
    seconds = max(1.0, sum(walls) / 1e3)
    idle = lateness(lambda: time.sleep(0.01), seconds)
    busy = lateness(lambda: gate.judge(model), seconds)
    print(
        f"judge over {args.truth} truth windows: median {statistics.median(walls):.2f} ms, "
        f"max {max(walls):.2f} ms ({args.repeat} runs)"
    )
    print(f"a 0.2 ms sleeper's lateness, idle:       p99 {idle[0]:.2f} ms, max {idle[1]:.2f} ms")
    print(f"a 0.2 ms sleeper's lateness, judging:    p99 {busy[0]:.2f} ms, max {busy[1]:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
