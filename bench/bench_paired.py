"""The floor, serve and the peer measured over the same minutes: the load alternates.

``bench_peer`` gives each system a whole ``--duration`` in turn, so a round's ratio of
serve's p99 to the floor's also measures how the shared machine changed between those
windows: on the 2-core dev box the floor's own p99 moves 2x between windows of identical
work. Here every system is started and ready at once, each on its own topics, and one load
generator sends to one system at a time in short segments (``--segment`` s), rotating. Each
system's figures then come from interleaved stretches of the same minutes, and a stretch of
bad luck falls on all of them alike.

- Each system's frames continue its own fleet across segments (seq and event time run on
  as if never paused), so serve sees no gap; the load is ``bench_e2e.load``'s (open-loop
  frames of ``rate / 10`` vehicles at 10 Hz).
- The first rotation is warm-up (serve's windows fill): its answers are not counted.
- CPU per 10k frames counts each system's processes, and the broker, only over that
  system's own counted segments (read at each switch); the same processes over the others'
  segments give each one's idle CPU. Unanswered counts every frame sent.
- The broker JVM's GC pauses (when this bench started the broker) are counted for the
  system whose counted segment they began in: a 15-20 ms young-GC pause delays every frame
  in flight, and a handful of them decide much of a 20 s window's p99.
- Valid only while every system keeps up: one that falls behind answers its backlog during
  the others' segments (its ``unanswered`` and p99 show it).
- ``busy`` (not by default) is the floor's echo burning ``--busy-us`` of CPU per poll
  before passing the records on: the tail serve would have if its work per poll were that
  much CPU and nothing else. With ``--busy-us 0`` it is the floor's twin, and its ratio to
  the floor is what the machine alone puts between two identical systems in one run (on
  the 2-core VM at 5,000/s up to 1.77x: BENCHMARKS.md, twentieth pass).

    python bench/bench_paired.py [--systems floor,serve,peer,busy] [--rate 1000]
        [--segment 2] [--duration 20] [--runs 3] [--busy-us 250] [--bootstrap HOST:PORT]
        [--json PATH]

``--duration`` is each system's counted load per run (the run lasts ``len(systems)`` times
that, plus the warm-up rotation). Without --bootstrap a fresh local broker is started.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import bench_peer as bp  # bench/ is on sys.path as a script; bench_e2e adds the repo root
from confluent_kafka import TopicPartition

from schemas.headers import now_ns
from schemas.kafka import Consumer, Producer

e2e = bp.e2e


def plan(systems: list[str], duration: float, segment: float) -> list[str]:
    """Who gets the load in each segment: one warm-up rotation, then enough rotations for
    ``duration`` s each (at least one)."""
    rotations = max(1, round(duration / segment))
    return list(systems) * (1 + rotations)


@dataclass
class Marks:
    """What the load generator saw: when each segment began, and every system's CPU (and
    the broker's) then; one more mark when the last segment ended."""

    plan: list[str]
    at_ns: list[int] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)

    def add(self, cpu: dict[str, float]) -> None:
        self.at_ns.append(now_ns())
        self.cpu.append(cpu)

    def counted(self, k: int) -> bool:
        """Segment ``k`` is past the warm-up rotation."""
        return k >= len(set(self.plan))

    def segment_of(self, t_ns: int) -> int:
        """The segment a frame sent at ``t_ns`` was sent in (-1: before the first)."""
        return sum(1 for t in self.at_ns[: len(self.plan)] if t <= t_ns) - 1

    def counted_spans(self, during: str) -> list[tuple[float, float]]:
        """(start, end) in epoch s of ``during``'s counted segments."""
        return [
            (self.at_ns[k] / 1e9, self.at_ns[k + 1] / 1e9)
            for k, s in enumerate(self.plan)
            if self.counted(k) and s == during
        ]

    def cpu_s(self, who: str, during: str, active: bool = True) -> tuple[float, float]:
        """CPU seconds of ``who`` and wall seconds over the counted segments that were
        ``during``'s (``active``) or any other system's (not ``active``)."""
        cpu = wall = 0.0
        for k, s in enumerate(self.plan):
            if self.counted(k) and (s == during) == active:
                cpu += self.cpu[k + 1][who] - self.cpu[k][who]
                wall += (self.at_ns[k + 1] - self.at_ns[k]) / 1e9
        return cpu, wall


def measure(b: bp.Bench, rate: int, segment: float, duration: float) -> list[dict]:
    """One run: every system ready on fresh topics, the load rotating between them; a row
    per system, as ``bench_peer.measure_rate``'s."""
    systems, order = b.args.systems, plan(b.args.systems, duration, segment)
    per_segment, vehicles = int(rate * segment), max(1, rate // 10)
    with contextlib.ExitStack() as stack:
        topics = {s: bp.fresh_topics(b, s) for s in systems}
        pids: dict[str, set[int]] = {}
        exits: dict[str, int | None] = {}  # who exited while measured (None: ran on)
        for s in systems:
            proc = stack.enter_context(bp.running(b, s, topics[s], b.args.budget_ms))
            pids[s] = bp.process_tree(proc.pid)
            stack.callback(lambda s=s, proc=proc: exits.__setitem__(s, proc.poll()))
        if b.broker_pid:
            pids["broker"] = {b.broker_pid}
        marks = Marks(order)
        done = threading.Event()

        def mark() -> None:
            marks.add({who: bp.cpu_of(ps) for who, ps in pids.items()})

        def produce() -> None:
            sent = dict.fromkeys(systems, 0)
            with Producer(b.settings).connect() as p:
                for s in order:
                    mark()
                    for due in e2e.paced(rate, per_segment):
                        for _ in due:
                            e2e.send_frame(p, topics[s].src, sent[s], vehicles)
                            sent[s] += 1
            mark()
            done.set()

        got = {s: [] for s in systems}
        stamps: dict[str, list[tuple[int, ...]]] = {s: [] for s in systems}
        system_of = {topics[s].dst: s for s in systems}
        c = Consumer(b.settings, group_id=None)
        dsts = [topics[s].dst for s in systems]
        c.client.assign([TopicPartition(t, p) for t in dsts for p in c.partitions_for(t)])
        expected = per_segment * len(order)
        threading.Thread(target=produce, daemon=True).start()
        deadline = time.monotonic() + len(order) * segment + 30
        while sum(map(len, got.values())) < expected and time.monotonic() < deadline:
            msgs = c.poll(timeout_ms=100, max_records=2000)
            now = now_ns()
            for m in msgs:
                s = system_of[m.topic]
                answer, stages = e2e.receive(m, now)
                got[s].append(answer)
                if stages is not None:
                    stamps[s].append(stages)
        c.close()
        if not done.wait(10):
            raise SystemExit("the load generator did not finish its segments")
    return [_row(s, rate, got[s], stamps[s], marks, per_segment, b, exits) for s in systems]


def _row(
    s: str,
    rate: int,
    got: list,
    stamps: list,
    marks: Marks,
    per_segment: int,
    b: bp.Bench,
    exits: dict[str, int | None],
) -> dict:
    steady = [marks.counted(marks.segment_of(a[0])) for a in got]
    sent = per_segment * marks.plan.count(s)
    counted = sent - per_segment  # the warm-up rotation's frames are not counted
    answers = list(itertools.compress(got, steady))
    if len(stamps) == len(got):  # predictions: their stages, counted like the answers
        stamps = list(itertools.compress(stamps, steady))
    everyone = [True] * len(answers)  # per-second p99s too: from the counted answers only
    res = e2e.summarize(sent, answers, stamps, everyone, marks.at_ns[0], b.args.budget_ms)
    res["answered"] = len(got)
    seconds = res.pop("p99_by_second_ms")
    cpu, _ = marks.cpu_s(s, s)
    idle_cpu, idle_wall = marks.cpu_s(s, s, active=False)
    broker = marks.cpu_s("broker", s)[0] if "broker" in marks.cpu[0] else None
    gc = bp.broker_gc_pauses(b.broker_gc_log, marks.counted_spans(s))
    return {
        "system": s,
        "rate": rate,
        **res,
        **gc,
        "unanswered": sent - len(got),
        "p99_by_second_median_ms": statistics.median(seconds) if seconds else None,
        "p99_by_second_worst_ms": max(seconds) if seconds else None,
        "cpu_s_per_10k": bp.per_10k(cpu, counted),
        "idle_cpu_pct": round(100 * idle_cpu / idle_wall, 2) if idle_wall else None,
        "broker_cpu_s_per_10k": bp.per_10k(broker, counted),
        "exit_code": exits.get(s),
    }


RATIOS = (
    ("serve p99 / floor p99", "serve", "floor", "p99_ms"),
    ("busy p99 / floor p99", "busy", "floor", "p99_ms"),
    ("serve CPU / peer CPU", "serve", "peer", "cpu_s_per_10k"),
)
"""Ratios the table shows per run where both systems ran: (heading, over, under, figure)."""


def table(rows: list[dict], systems: list[str]) -> str:
    """Per run: each system's p50/p99 and CPU, then the :data:`RATIOS` of the systems
    that ran (serve's p99 over the floor's, ...); then the medians."""
    ratios = [r for r in RATIOS if {r[1], r[2]} <= set(systems)]
    head = ["run"]
    for s in systems:
        head += [f"{s} p50 / p99 ms", f"{s} CPU s/10k"]
    head += [r[0] for r in ratios]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    values: dict[str, list[float]] = {r[0]: [] for r in ratios}
    by_run: dict[int, dict[str, dict]] = {}
    for r in rows:
        by_run.setdefault(r["run"], {})[r["system"]] = r
    for run, rs in sorted(by_run.items()):
        cells = [str(run)]
        for s in systems:
            r = rs[s]
            cells += [f"{r['p50_ms']} / {r['p99_ms']}", str(r["cpu_s_per_10k"])]
        for heading, over, under, key in ratios:
            values[heading].append(rs[over][key] / rs[under][key])
            cells.append(f"{values[heading][-1]:.2f}")
        out.append("| " + " | ".join(cells) + " |")
    cells = ["median"]
    for s in systems:
        rs = [r for r in rows if r["system"] == s]
        p50, p99, cpu = (bp._med(rs, k) for k in ("p50_ms", "p99_ms", "cpu_s_per_10k"))
        cells += [f"{p50} / {p99}", str(cpu)]
    cells += [f"{statistics.median(v):.2f}" for v in values.values()]
    out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--systems", default="floor,serve,peer", help="of floor,serve,peer,busy")
    p.add_argument("--rate", type=int, default=1000, help="frames/s while a system has the load")
    p.add_argument("--segment", type=float, default=2.0, help="s of load per turn")
    p.add_argument("--duration", type=float, default=20.0, help="counted s per system per run")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--bootstrap", default=None, help="use this broker (default: start one)")
    p.add_argument("--serve-flags", default="", help="more `serve` flags")
    p.add_argument("--busy-us", type=float, default=250.0, help="busy's CPU per poll (µs)")
    p.add_argument("--json", default="", help="write every run's figures here")
    args = p.parse_args()
    peer_args = bp.parse_args(
        ["--systems", args.systems, "--serve-flags", args.serve_flags, "--rates", ""]
        + ["--busy-us", str(args.busy_us)]
        + (["--bootstrap", args.bootstrap] if args.bootstrap else []),
        systems=(*bp.SYSTEMS, bp.BUSY),
    )
    bp.exit_cleanly_on_signals()
    rows: list[dict] = []
    with bp.open_bench(peer_args) as b:
        print("warm-up: 10 s of floor load, discarded", flush=True)
        bp.measure_rate(b, "floor", args.rate, 10)  # a fresh broker's JIT
        systems = list(peer_args.systems)
        for run in range(1, args.runs + 1):
            k = (run - 1) % len(systems)
            b.args.systems = systems[k:] + systems[:k]  # who goes first rotates
            for row in measure(b, args.rate, args.segment, args.duration):
                rows.append(row := {"run": run, **row})
                if row["exit_code"] is not None:
                    print(f"warning: {row['system']} exited with {row['exit_code']}")
                print(f"run {run}: {row['system']}: {json.dumps(row)}", flush=True)
        print()
        print(table(rows, systems))
    if args.json:
        Path(args.json).write_text(json.dumps({"config": vars(args), "rows": rows}, indent=1))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
