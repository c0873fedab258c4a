"""Faults: what each one costs the answers, on a fresh local broker per fault.

A steady synthetic load (``--rate`` frames/s, vehicles at 10 Hz) goes to `sensors` while
``python -m inference`` answers it (CV model, gate off); ``--fault-at`` seconds in, one fault:

- ``serve-restart``: kill -9 of the only serve, started again ``--down-s`` later;
- ``serve-restart-static``: the same with ``--instance-id`` (static membership);
- ``serve-peer``: kill -9 of one of two serve instances in a group (``--session-timeout-ms``);
- ``broker``: kill -9 of the broker, started again ``--down-s`` later on its port and data;
- ``cluster-node``: kill -9 of node 1 of a 3-node cluster (topics: 3 replicas, min ISR 2),
  started again ``--down-s`` later;
- ``rank``: kill -9 of one of two trainer ranks (with ``ps`` and ``train`` running).

Then ``--guarantees``: serve at-least-once beside ``--guarantee exactly-once`` at
``--guarantee-rate`` frames/s, rounds alternating on one broker (p50/p99 after a 3 s warm-up).

Per fault: time from the fault to the first answer to a frame sent after it, and until
every vehicle has such an answer; p99 latency of the frames sent in the 10 s after it (for
``broker``: after it is back), p99 before it (first answers to frames sent from 3 s after
the start until 1 s before the fault), frames unanswered,
duplicates (at-least-once: answered but not committed before the fault), and for ``rank``
the time until the parameter server accepts the group's next delta.

    python bench/bench_faults.py [--faults serve-restart,serve-peer,broker,rank] [--runs 3]
                                 [--guarantees]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bench_e2e  # noqa: E402  (bench/ is on sys.path when run as a script)
import synthetic  # noqa: E402

from pipeline.broker import BrokerConfig, LocalBroker  # noqa: E402
from pipeline.processes import free_port  # noqa: E402
from schemas.headers import now_ns  # noqa: E402
from schemas.kafka import Consumer, KafkaSettings, Producer, ensure_topics  # noqa: E402
from schemas.prediction import decode_prediction  # noqa: E402
from schemas.sensor import encode_frames, frame_headers  # noqa: E402
from schemas.topics import TopicNames, default_topics  # noqa: E402
from trainer.launch import _children  # noqa: E402

WARMUP_NS = 3 * 10**9
FAULTS = ("serve-restart", "serve-restart-static", "serve-peer", "broker", "cluster-node", "rank")


class Load:
    """Sends frames at ``rate`` and records every answer (vehicle, seq, sent ns, received ns)."""

    def __init__(self, settings: KafkaSettings, names: TopicNames, rate: int) -> None:
        self.settings, self.names, self.rate = settings, names, rate
        self.sent: dict[tuple[str, int], int] = {}
        self.answers: list[tuple[str, int, int, int]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=f, daemon=True) for f in (self._send, self._read)]

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def _send(self) -> None:
        vehicles = max(1, self.rate // 10)
        with Producer(self.settings).connect() as p:
            t0, n = time.monotonic(), 0
            while not self._stop.is_set():
                due = int((time.monotonic() - t0) * self.rate)
                while n < due:
                    f = synthetic.frame(n, vehicles, heading_step=0.01)
                    t = now_ns()
                    p.send(self.names.sensors, encode_frames([f]), f.vehicle_id, frame_headers(t))
                    self.sent[(f.vehicle_id, f.seq)] = t
                    n += 1
                time.sleep(0.005)

    def _read(self) -> None:
        with Consumer(self.settings, group_id=None) as c:
            topic = self.names.predictions
            c.assign(topic, sorted(c.partitions_for(topic)))
            while not self._stop.is_set() or time.monotonic() < self._drain_until:
                for m in c.poll(timeout_ms=100, max_records=5000):
                    p = decode_prediction(m.value)
                    self.answers.append((p.vehicle_id, p.seq, p.t_produce_ns, now_ns()))

    _drain_until = float("inf")

    def stop_sending(self) -> None:
        self._stop.set()

    def drain(self, timeout_s: float) -> None:
        """Wait until every frame sent has an answer, or ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len({(v, s) for v, s, _, _ in self.answers}) >= len(self.sent):
                break
            time.sleep(0.2)
        self._drain_until = 0.0
        self._threads[1].join(5)

    def summary(self, fault_ns: int, from_ns: int) -> dict:
        """Figures for a fault at ``fault_ns`` whose effects are measured from ``from_ns``."""
        seen = Counter((v, s) for v, s, _, _ in self.answers)
        warm = min(self.sent.values()) + WARMUP_NS  # the first seconds of a fresh service
        after = [(v, sent, recv) for v, _, sent, recv in self.answers if sent >= fault_ns]
        first = min((recv for _, _, recv in after), default=None)
        first_by_vehicle: dict[str, int] = {}
        for v, _, recv in after:
            first_by_vehicle[v] = min(recv, first_by_vehicle.get(v, recv))
        window = [recv - sent for _, sent, recv in after if from_ns <= sent < from_ns + 10**10]
        # first answers only, to frames sent well before the fault: a frame in flight at the
        # fault, and a duplicate answer after it, are the fault's cost, not the baseline
        firsts: dict[tuple[str, int], int] = {}
        for v, s, sent, recv in self.answers:
            if warm <= sent < fault_ns - 10**9:
                firsts[(v, s)] = min(recv - sent, firsts.get((v, s), recv - sent))
        before = list(firsts.values())
        return {
            "sent": len(self.sent),
            "unanswered": len(set(self.sent) - set(seen)),
            "duplicates": sum(seen.values()) - len(seen),
            "first_answer_after_s": None if first is None else round((first - fault_ns) / 1e9, 3),
            "all_answering_after_s": round((max(first_by_vehicle.values()) - fault_ns) / 1e9, 3)
            if first_by_vehicle
            else None,
            "p99_10s_after_ms": round(float(np.percentile(window, 99)) / 1e6, 1)
            if window
            else None,
            "p99_before_ms": round(float(np.percentile(before, 99)) / 1e6, 1),
        }


def serve(
    boot: str, names: TopicNames, args: argparse.Namespace, *extra: str, wait: bool = True
) -> subprocess.Popen:
    """`python -m inference` as bench_e2e starts it (CV model, gate off, CPU), with the
    bench's session timeout and ``extra`` flags; ``wait``: until it serves the model on
    some partitions."""
    port = free_port()
    flags = ("--session-timeout-ms", str(args.session_timeout_ms), *extra)
    proc = bench_e2e.start_serve(boot, names.prefix, port, args, *flags)
    if wait:
        bench_e2e.wait_health(port, proc, partitions=0)
    return proc


def trainer_procs(boot: str, names: TopicNames, tmp: Path) -> list[subprocess.Popen]:
    common = ["--bootstrap", boot, "--topic-prefix", names.prefix]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = (tmp / "trainer.log").open("ab")
    py = sys.executable
    return [
        subprocess.Popen(
            [py, "-m", "trainer.ps", *common, "--checkpoint-dir", str(tmp / "ps"),
             "--registry-dir", str(tmp / "reg")],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        ),
        subprocess.Popen(
            [py, "-m", "trainer", "train", *common, "--nproc", "2", "--sync-every-steps", "10",
             "--checkpoint-dir", str(tmp / "train")],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        ),
    ]  # fmt: skip


def updates_end(settings: KafkaSettings, topic: str) -> int:
    with Consumer(settings, group_id=None) as c:
        return c.watermarks(topic, 0)[1]


def one_fault(fault: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cluster = fault == "cluster-node"
        broker = LocalBroker(
            BrokerConfig(
                data_dir=tmp / "broker",
                port=0 if cluster else free_port(),
                brokers=3 if cluster else 1,
                heap_mb=384 if cluster else 512,
            )
        )
        broker.start()
        procs: list[subprocess.Popen] = []
        try:
            boot = broker.bootstrap
            settings = KafkaSettings(bootstrap=boot)
            names = TopicNames(prefix=f"faults{uuid.uuid4().hex[:8]}-")
            ensure_topics(settings, default_topics(4, names.prefix))
            bench_e2e.publish_model(settings, names.models, bench_e2e.model_record(1))
            if fault == "rank":
                procs += trainer_procs(boot, names, tmp)
                while updates_end(settings, names.ps_updates) < 1:
                    time.sleep(0.5)
            named = ("--instance-id", "bench-1") if fault == "serve-restart-static" else ()
            procs.append(serve(boot, names, args, *named))
            if fault == "serve-peer":
                procs.append(serve(boot, names, args))
            load = Load(settings, names, args.rate).start()
            time.sleep(args.fault_at)
            fault_ns, extra = now_ns(), {}
            from_ns = fault_ns
            if fault.startswith("serve"):
                procs[-1].kill()
                procs[-1].wait()
                if fault.startswith("serve-restart"):
                    time.sleep(args.down_s)
                    procs[-1] = serve(boot, names, args, *named, wait=False)
            elif fault == "cluster-node":  # one of three, back after --down-s
                broker.kill_node(1)
                time.sleep(args.down_s)
                broker.start()
            elif fault == "broker":
                broker.kill_node(1)
                time.sleep(args.down_s)
                broker.start()
                from_ns = now_ns()
                extra["broker_down_s"] = round((from_ns - fault_ns) / 1e9, 2)
            else:
                before = updates_end(settings, names.ps_updates)
                ranks = [r for t in _children(procs[1].pid) for r in _children(t)]
                os.kill(ranks[-1], signal.SIGKILL)
                while updates_end(settings, names.ps_updates) <= before + 1:
                    time.sleep(0.2)
                extra["training_resumed_s"] = round((now_ns() - fault_ns) / 1e9, 2)
            time.sleep(max(0.0, args.duration - args.fault_at - (now_ns() - fault_ns) / 1e9))
            load.stop_sending()
            load.drain(60)
            return {"fault": fault, **load.summary(fault_ns, from_ns), **extra}
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
            broker.stop()


def guarantee_round(guarantee: str, args: argparse.Namespace, boot: str) -> dict:
    settings = KafkaSettings(bootstrap=boot)
    names = TopicNames(prefix=f"eos{uuid.uuid4().hex[:8]}-")
    ensure_topics(settings, default_topics(4, names.prefix))
    bench_e2e.publish_model(settings, names.models, bench_e2e.model_record(1))
    proc = serve(boot, names, args, "--guarantee", guarantee)
    try:
        load = Load(settings, names, args.guarantee_rate).start()
        t0 = now_ns()
        time.sleep(args.guarantee_s)
        load.stop_sending()
        load.drain(60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    lat = [r - s for _, _, s, r in load.answers if s >= t0 + 3 * 10**9]
    seen = Counter((v, s) for v, s, _, _ in load.answers)
    return {
        "guarantee": guarantee,
        "p50_ms": round(float(np.percentile(lat, 50)) / 1e6, 2),
        "p99_ms": round(float(np.percentile(lat, 99)) / 1e6, 2),
        "unanswered": len(set(load.sent) - set(seen)),
        "duplicates": sum(seen.values()) - len(seen),
    }


def guarantees(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as d:
        broker = LocalBroker(BrokerConfig(data_dir=Path(d), port=free_port()))
        broker.start()
        try:
            rows: dict[str, list[dict]] = {}
            for _ in range(args.runs):
                for g in ("at-least-once", "exactly-once"):
                    row = guarantee_round(g, args, broker.bootstrap)
                    rows.setdefault(g, []).append(row)
                    print(json.dumps(row), flush=True)
        finally:
            broker.stop()
    for g, runs in rows.items():
        p50 = statistics.median(r["p50_ms"] for r in runs)
        p99 = statistics.median(r["p99_ms"] for r in runs)
        print(f"{g} at {args.guarantee_rate}/s: median p50 {p50} ms, p99 {p99} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--fault-at", type=float, default=15.0)
    parser.add_argument("--down-s", type=float, default=3.0)
    parser.add_argument("--session-timeout-ms", type=int, default=1500)
    parser.add_argument("--budget-ms", type=float, default=50.0)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--guarantees", action="store_true", help="also compare guarantees")
    parser.add_argument("--guarantee-rate", type=int, default=1000)
    parser.add_argument("--guarantee-s", type=float, default=20.0)
    args = parser.parse_args()
    args.device = "cpu"
    if args.guarantees:
        guarantees(args)
    rows: dict[str, list[dict]] = {}
    for _ in range(args.runs):
        for fault in filter(None, args.faults.split(",")):
            row = one_fault(fault, args)
            rows.setdefault(fault, []).append(row)
            print(json.dumps(row), flush=True)
    for fault, runs in rows.items():
        med = {
            k: statistics.median(r[k] for r in runs)
            for k in runs[0]
            if isinstance(runs[0][k], (int, float)) and all(r[k] is not None for r in runs)
        }
        print(f"{fault}: median of {len(runs)}: {json.dumps(med)}", flush=True)


if __name__ == "__main__":
    main()
