"""Side by side on one broker: the two-hop floor, `drivestream serve` and a quixstreams peer.

Three systems answer the same frames, each in its own process, measured by the same load
generator and measuring client (``bench_e2e.load``: open-loop frames of ``rate / 10``
vehicles at 10 Hz, latency = prediction received - the frame's ``t_produce_ns``):

- ``floor``: ``bench_e2e.echo_worker``, consume -> produce with no work (two Kafka hops);
- ``serve``: ``python -m inference`` (`drivestream serve`) on the model path (gate off),
  as ``bench_e2e.start_serve`` runs it, CPU by default;
- ``peer``: the same job written with quixstreams (``bench/peer/quix_serve.py``, in its own
  virtualenv under ``~/.cache/drivestream``, built on first use), on the same ONNX model.

Per system and rate: p50/p99/max, the median and worst p99 of each second, the share of
answers later than serve's budget (for the floor: frames the transport alone makes late, which
no service can answer in time), fallback share, unanswered frames, and CPU seconds per 10k
frames of the system's processes (utime+stime from /proc over the measured window; the
broker's beside it when this bench started it). When it started the broker it also logs
the broker JVM's GC and reports, per run, its pauses inside the measured window (count,
longest, total): a young-GC pause delays every frame in flight on both hops.
Rounds are interleaved (each run does every rate and system, the system order rotating),
so drift hits all alike. The idle test (``--idle`` s) reads each ready system's CPU while
no frame comes: the constant a low rate pays on top of its frames. The backlog test
pre-fills ``--backlog`` frames while the started, ready system is paused (SIGSTOP: joined,
model loaded, nothing to do), resumes it and measures frames/s and CPU until every frame is
answered; serve runs it with a budget that makes no frame late (``--backlog-budget-ms``),
so it does the model's work like the others.

    python bench/bench_peer.py [--systems floor,serve,peer] [--rates 1000,5000,10000]
        [--duration 30] [--runs 3] [--backlog 30000] [--idle 10] [--bootstrap HOST:PORT]
        [--serve-flags '--linger-ms 0.25'] [--json PATH]

Without --bootstrap a fresh local broker (pipeline.broker) is started for the run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import bench_e2e as e2e  # bench/ is on sys.path when run as a script; it adds the repo root
from bench_serve_throughput import fill

from pipeline.processes import free_port
from schemas.envelope import decode_envelope, encode_envelope
from schemas.headers import now_ns
from schemas.kafka import Consumer, KafkaSettings, ensure_topics
from schemas.prediction import decode_prediction
from schemas.topics import TopicNames, TopicSpec, default_topics

ROOT = e2e.ROOT
PEER_APP = ROOT / "bench" / "peer" / "quix_serve.py"
PEER_REQUIREMENTS = (
    "quixstreams==3.28.1",
    "onnxruntime==1.31.1",  # the CPU build of the version serve runs (onnxruntime-gpu)
    "numpy==2.4.6",
    "pyarrow==26.0.1",  # schemas.sensor and schemas.prediction import it
)
SYSTEMS = ("floor", "serve", "peer")
BUSY = "busy"
"""The floor's echo burning ``--busy-us`` of CPU per poll (bench_paired only): what serve's
tail would be if its work per poll were that much CPU and nothing else."""
ECHOES = ("floor", BUSY)
PARTITIONS = 4
_TICK = os.sysconf("SC_CLK_TCK")


# --- processes ---------------------------------------------------------------------------
def peer_python() -> Path:
    """The peer's interpreter: a venv named by a hash of the pinned requirements, built once."""
    spec = "\n".join(PEER_REQUIREMENTS)
    tag = hashlib.sha256(spec.encode()).hexdigest()[:10]
    venv = Path.home() / ".cache" / "drivestream" / f"peer-venv-{tag}"
    python, done = venv / "bin" / "python", venv / ".complete"
    if done.exists():
        return python
    shutil.rmtree(venv, ignore_errors=True)  # a half-built one
    print(f"building {venv}: {', '.join(PEER_REQUIREMENTS)} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *PEER_REQUIREMENTS], check=True)
    done.write_text(spec + "\n")
    return python


def _stat(pid: int | str) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on


def cpu_seconds(pid: int) -> float:
    """utime+stime of ``pid`` and its live descendants, plus the children they reaped."""
    return cpu_of(process_tree(pid))


def process_tree(pid: int) -> set[int]:
    """``pid`` and its live descendants."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                parent[int(d.name)] = int(_stat(d.name)[1])
    tree, todo = {pid}, [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in tree]
        tree.update(kids)
        todo += kids
    return tree


def cpu_of(pids: set[int]) -> float:
    """utime+stime of ``pids``, plus the children they reaped (gone ones count nothing)."""
    ticks = 0
    for p in pids:
        with contextlib.suppress(OSError, IndexError):
            f = _stat(p)
            ticks += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return ticks / _TICK


def cpu_ticks() -> tuple[int, int]:
    """(steal, all) jiffies of the whole machine from /proc/stat: the share the hypervisor
    gave to others while we wanted the CPU."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[7], sum(fields[:8])


def steal_pct(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    total = after[1] - before[1]
    return round(100 * (after[0] - before[0]) / total, 2) if total > 0 else None


class Procs:
    """Every process this bench starts; ``close`` stops those still running."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen] = []

    def add(self, proc: subprocess.Popen) -> subprocess.Popen:
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, timeout_s: float = 20) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)  # a paused one handles SIGTERM only then
                proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if proc in self._procs:
            self._procs.remove(proc)

    def close(self) -> None:
        for proc in reversed(self._procs[:]):
            self.stop(proc)


def wait_group(bootstrap: str, group: str, proc: subprocess.Popen, timeout_s: float = 90) -> None:
    """Until ``group`` is stable with every partition of the input assigned."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the peer exited with {proc.returncode}")
        with contextlib.suppress(Exception):  # the group does not exist yet
            desc = admin.describe_consumer_groups([group])[group].result(timeout=5)
            owned = sum(len(m.assignment.topic_partitions) for m in desc.members)
            if desc.state == ConsumerGroupState.STABLE and owned >= PARTITIONS:
                return
        time.sleep(0.2)
    raise SystemExit(f"the peer's group {group} did not get its partitions")


# --- one system on fresh topics -----------------------------------------------------------
@dataclass
class Bench:
    """What every measurement shares."""

    args: argparse.Namespace
    bootstrap: str
    procs: Procs
    model_record: bytes
    """The `models` record serve gets (signed with the test key)."""
    model_path: Path
    """The same model's ONNX bytes, for the peer."""
    peer_python: Path | None
    broker_pid: int | None
    broker_gc_log: Path | None = None
    """The broker JVM's GC log (``-Xlog:gc``), when this bench started the broker."""

    @property
    def settings(self) -> KafkaSettings:
        return KafkaSettings(bootstrap=self.bootstrap)

    def broker_cpu(self) -> float | None:
        return cpu_seconds(self.broker_pid) if self.broker_pid else None


@dataclass(frozen=True)
class Topics:
    names: TopicNames
    src: str
    dst: str


def fresh_topics(b: Bench, system: str) -> Topics:
    names = TopicNames(prefix=f"peer{uuid.uuid4().hex[:8]}-")
    specs = default_topics(PARTITIONS, names.prefix)
    if system in ECHOES:  # bench_e2e.load decodes only topics named *predictions
        dst = names.prefix + "echo-out"
        specs.append(TopicSpec(name=dst, partitions=PARTITIONS))
    else:
        dst = names.predictions
    ensure_topics(b.settings, specs)
    return Topics(names, names.sensors, dst)


@contextlib.contextmanager
def running(b: Bench, system: str, t: Topics, budget_ms: float) -> Iterator[subprocess.Popen]:
    """``system`` started on ``t`` and ready (joined, model loaded); stopped on exit."""
    if system in ECHOES:
        cmd = [sys.executable, e2e.__file__, "--echo-worker", "--bootstrap", b.bootstrap]
        cmd += ["--src", t.src, "--dst", t.dst]
        if system == BUSY:
            cmd += ["--busy-us", str(b.args.busy_us)]
        proc = b.procs.add(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
    elif system == "serve":
        e2e.publish_model(b.settings, t.names.models, b.model_record)
        port = free_port()
        flags = argparse.Namespace(
            budget_ms=budget_ms, max_batch=b.args.max_batch, device=b.args.device
        )
        extra = b.args.serve_flags.split()
        proc = b.procs.add(e2e.start_serve(b.bootstrap, t.names.prefix, port, flags, *extra))
    else:
        assert b.peer_python is not None
        group = t.names.prefix + "quix"
        cmd = [str(b.peer_python), str(PEER_APP), "--bootstrap", b.bootstrap, "--group", group]
        cmd += ["--sensors", t.src, "--predictions", t.dst, "--model", str(b.model_path)]
        cmd += ["--linger-ms", str(b.args.peer_linger_ms)]
        proc = b.procs.add(subprocess.Popen(cmd, cwd=ROOT))
    try:
        if system in ECHOES:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit(f"the echo worker exited with {proc.wait()}")
        elif system == "serve":
            e2e.wait_health(port, proc, partitions=PARTITIONS)
        else:
            wait_group(b.bootstrap, group, proc)
        yield proc
    finally:
        b.procs.stop(proc)


def per_10k(seconds: float | None, frames: int) -> float | None:
    return None if seconds is None or not frames else round(seconds / frames * 1e4, 3)


def measure_rate(b: Bench, system: str, rate: int, duration: float | None = None) -> dict:
    """One system at ``rate`` frames/s for ``duration`` (``--duration``) s: latency,
    answers, CPU."""
    t = fresh_topics(b, system)
    with running(b, system, t, b.args.budget_ms) as proc:
        cpu0, broker0, ticks0 = cpu_seconds(proc.pid), b.broker_cpu(), cpu_ticks()
        wall0 = time.time()
        res = e2e.load(
            b.settings, t.src, t.dst, rate, duration or b.args.duration, budget_ms=b.args.budget_ms
        )
        wall1 = time.time()
        cpu1, broker1, ticks1 = cpu_seconds(proc.pid), b.broker_cpu(), cpu_ticks()
        exit_code = proc.poll()
    seconds = res.pop("p99_by_second_ms")[1:]  # second 0 holds the warm-up and the joins
    return {
        "system": system,
        "rate": rate,
        **res,
        "unanswered": res["sent"] - res["answered"],
        "p99_by_second_median_ms": statistics.median(seconds) if seconds else None,
        "p99_by_second_worst_ms": max(seconds) if seconds else None,
        "p99_by_second_ms": seconds,
        "cpu_s_per_10k": per_10k(cpu1 - cpu0, res["sent"]),
        "broker_cpu_s_per_10k": per_10k(
            None if broker0 is None or broker1 is None else broker1 - broker0, res["sent"]
        ),
        "steal_pct": steal_pct(ticks0, ticks1),
        **broker_gc_pauses(b.broker_gc_log, [(wall0, wall1)]),
        "exit_code": exit_code,  # None: it ran to the end
    }


_GC_PAUSE = re.compile(r"^\[([^\]]+)\].* Pause .* ([0-9.]+)ms$")


def broker_gc_pauses(log: Path | None, spans: list[tuple[float, float]]) -> dict:
    """The broker JVM's GC pauses that began within ``spans`` ((start, end) epoch s, end
    excluded): how many, the longest and their sum (ms); empty without a log."""
    if log is None or not log.exists():
        return {}
    pauses = [ms for at, ms in gc_pauses(log) if any(a <= at < z for a, z in spans)]
    return {
        "broker_gc_pauses": len(pauses),
        "broker_gc_pause_max_ms": max(pauses, default=0.0),
        "broker_gc_pause_total_ms": round(sum(pauses), 1),
    }


def gc_pauses(log: Path) -> list[tuple[float, float]]:
    """(began, epoch s; ms) of every pause in a JVM GC log (``-Xlog:gc:file=...:time``)."""
    pauses = []
    for line in log.read_text(errors="replace").splitlines():
        m = _GC_PAUSE.match(line)
        if m:
            at = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
            pauses.append((at, float(m.group(2))))
    return pauses


def measure_idle(b: Bench, system: str) -> dict:
    """The system's CPU while ready and given no frames for ``--idle`` s (its fixed cost:
    polling, timers, the Kafka client's own threads), as % of one core."""
    t = fresh_topics(b, system)
    with running(b, system, t, b.args.budget_ms) as proc:
        time.sleep(2)  # past what starting and joining leave to settle
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(b.args.idle)
        cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
        exit_code = proc.poll()
    return {
        "system": system,
        "idle_cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 2),
        "exit_code": exit_code,
    }


def measure_backlog(b: Bench, system: str) -> dict:
    """Fill ``--backlog`` frames while the ready system is paused, resume it, time the
    answers until all are in: frames/s from resume to the last answer, and CPU."""
    n, settings = b.args.backlog, b.settings
    t = fresh_topics(b, system)
    with running(b, system, t, b.args.backlog_budget_ms) as proc:
        os.kill(proc.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        fill(settings, t.src, n, b.args.backlog_vehicles)
        fill_s = time.monotonic() - t0
        if fill_s > 4:  # serve's session timeout is 6 s: a rebalance would be measured too
            print(f"warning: filling took {fill_s:.1f} s; the group may rebalance", flush=True)
        c = Consumer(settings, group_id=None)
        c.assign(t.dst, sorted(c.partitions_for(t.dst)))
        c.poll(timeout_ms=0)
        got, reasons = 0, Counter[str]()
        cpu0, broker0 = cpu_seconds(proc.pid), b.broker_cpu()
        start = last = now_ns()
        os.kill(proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + 60 + n / 1000
        while got < n and time.monotonic() < deadline and proc.poll() is None:
            msgs = c.poll(timeout_ms=100, max_records=5000)
            if msgs:
                last = now_ns()
            got += len(msgs)
            for m in msgs if system not in ECHOES else ():
                p = decode_prediction(m.value)
                if p.source == "fallback":
                    reasons[p.reason] += 1
        cpu1, broker1 = cpu_seconds(proc.pid), b.broker_cpu()
        exit_code = proc.poll()
        c.close()
    span_s = (last - start) / 1e9
    return {
        "system": system,
        "backlog": n,
        "answered": got,
        "unanswered": n - got,
        "fill_s": round(fill_s, 2),
        "span_s": round(span_s, 3),
        "frames_per_s": round(got / span_s) if span_s > 0 else None,
        "fallback_share": round(sum(reasons.values()) / max(1, got), 4),
        "fallback_reasons": dict(reasons),
        "cpu_s_per_10k": per_10k(cpu1 - cpu0, got),
        "broker_cpu_s_per_10k": per_10k(
            None if broker0 is None or broker1 is None else broker1 - broker0, got
        ),
        "exit_code": exit_code,
    }


# --- model, tables, main --------------------------------------------------------------
def model_record(kind: str) -> bytes:
    """v1 of the benchmark's model: bench_e2e's constant-velocity one, or the trainer's
    untrained TrajectoryModel (its physics prior: the graph serve runs in production)."""
    if kind == "cv":
        return e2e.model_record(1)
    from schemas.model_spec import DEFAULT_SPEC
    from tests.model_fixtures import envelope
    from trainer.export import OnnxExporter
    from trainer.model import build_model, trainable_state

    model = build_model(DEFAULT_SPEC, hidden=64, seed=0)
    onnx = OnnxExporter(model, DEFAULT_SPEC).export(trainable_state(model))
    return encode_envelope(envelope(onnx, 1))


def _med(rows: list[dict], key: str, digits: int = 2) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(values), digits) if values else None


def _worst(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return round(max(values), 1) if values else None


def _cell(v: object) -> str:
    return "–" if v is None else str(v)


def _share(v: float | None) -> str:
    return "–" if v is None else f"{v:.2%}"


def tables(rows: list[dict], backlog: list[dict], systems: list[str], idle: list[dict] = ()) -> str:
    """The markdown tables: medians over runs (unanswered: the sum)."""
    out: list[str] = []
    rates = sorted({r["rate"] for r in rows})
    cols = "| rate | floor p99 | drivestream p99 (x floor) | peer p99 | floor over budget "
    cols += "| drivestream fallback | drivestream CPU s/10k | peer CPU s/10k |"
    out += [cols, "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for rate in rates:
        m = {s: [r for r in rows if r["rate"] == rate and r["system"] == s] for s in SYSTEMS}
        floor, serve, peer = (_med(m[s], "p99_ms") for s in SYSTEMS)
        ratio = f" ({serve / floor:.1f}x)" if serve is not None and floor else ""
        out.append(
            f"| {rate} | {_cell(floor)} | {_cell(serve)}{ratio} | {_cell(peer)} | "
            f"{_share(_med(m['floor'], 'over_budget_share', 4))} | "
            f"{_share(_med(m['serve'], 'fallback_share', 4))} | "
            f"{_cell(_med(m['serve'], 'cpu_s_per_10k'))} | "
            f"{_cell(_med(m['peer'], 'cpu_s_per_10k'))} |"
        )
    keys = ("p50_ms", "p99_ms", "max_ms", "p99_by_second_median_ms", "p99_by_second_worst_ms")
    out += [
        "",
        "| system | rate | runs | p50 | p99 | max | p99/s median | p99/s worst | over budget "
        "| fallback | unanswered | CPU s/10k | broker CPU s/10k | steal % | broker GC max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rate in rates:
        for s in systems:
            rs = [r for r in rows if r["rate"] == rate and r["system"] == s]
            if rs:
                share = _med(rs, "fallback_share", 4)
                cells = [_cell(_med(rs, k)) for k in keys]
                out.append(
                    f"| {s} | {rate} | {len(rs)} | {' | '.join(cells)} | "
                    f"{_share(_med(rs, 'over_budget_share', 4))} | {_share(share)} | "
                    f"{sum(r['unanswered'] for r in rs)} | {_cell(_med(rs, 'cpu_s_per_10k'))} | "
                    f"{_cell(_med(rs, 'broker_cpu_s_per_10k'))} | {_cell(_med(rs, 'steal_pct'))} | "
                    f"{_cell(_worst(rs, 'broker_gc_pause_max_ms'))} |"
                )
    if idle:
        out += ["", "idle, ready, no frames (median of runs):", "| system | CPU, % of a core |"]
        out += ["|---|---:|"]
        for s in systems:
            rs = [r for r in idle if r["system"] == s]
            if rs:
                out.append(f"| {s} | {_cell(_med(rs, 'idle_cpu_pct'))} |")
    if backlog:
        out += [
            "",
            f"backlog of {backlog[0]['backlog']} frames (median of runs):",
            "| system | frames/s | CPU s/10k | broker CPU s/10k | fallback | unanswered |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for s in systems:
            rs = [r for r in backlog if r["system"] == s]
            if rs:
                out.append(
                    f"| {s} | {_cell(_med(rs, 'frames_per_s'))} | "
                    f"{_cell(_med(rs, 'cpu_s_per_10k'))} | "
                    f"{_cell(_med(rs, 'broker_cpu_s_per_10k'))} | "
                    f"{_share(_med(rs, 'fallback_share', 4))} | "
                    f"{sum(r['unanswered'] for r in rs)} |"
                )
    return "\n".join(out)


def parse_args(
    argv: list[str] | None = None, systems: tuple[str, ...] = SYSTEMS
) -> argparse.Namespace:
    """This bench's arguments; ``systems``: the ones ``--systems`` may name."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", default=None, help="use this broker (default: start one)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"of {','.join(systems)}")
    p.add_argument("--rates", default="1000,5000,10000", help="frames/s; '' = none")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per rate")
    p.add_argument("--runs", type=int, default=3, help="rounds, interleaved")
    p.add_argument(
        "--warmup", type=float, default=10.0, help="s of floor load first, discarded (JVM JIT)"
    )
    p.add_argument("--backlog", type=int, default=30_000, help="frames; 0 = no backlog test")
    p.add_argument("--backlog-vehicles", type=int, default=100)
    p.add_argument("--idle", type=float, default=10.0, help="s of idle CPU; 0 = no idle test")
    p.add_argument("--backlog-budget-ms", type=float, default=1e9, help="serve's, backlog")
    p.add_argument("--budget-ms", type=float, default=50.0, help="serve's latency budget")
    p.add_argument("--max-batch", type=int, default=64, help="serve's micro-batch")
    p.add_argument("--serve-flags", default="", help="more `serve` flags ('--linger-ms 0.25')")
    p.add_argument("--device", default="cpu", help="serve's (the peer runs on CPU)")
    p.add_argument("--model", choices=("cv", "trajectory"), default="cv")
    p.add_argument("--peer-python", default="", help="the peer's interpreter (default: built)")
    p.add_argument("--peer-linger-ms", type=float, default=2.0, help="the peer's producer's")
    p.add_argument("--json", default="", help="write every run's figures here")
    busy_help = "the busy echo's CPU per poll, µs" if BUSY in systems else argparse.SUPPRESS
    p.add_argument("--busy-us", type=float, default=250.0, help=busy_help)
    args = p.parse_args(argv)
    args.systems = [s for s in args.systems.split(",") if s]
    if not args.systems or set(args.systems) - set(systems):
        p.error(f"--systems must name some of {','.join(systems)}")
    args.rates = [int(r) for r in args.rates.split(",") if r]
    return args


@contextlib.contextmanager
def java_options(option: str) -> Iterator[None]:
    """Add ``option`` to JAVA_TOOL_OPTIONS for JVMs started inside (the user's kept)."""
    before = os.environ.get("JAVA_TOOL_OPTIONS")
    os.environ["JAVA_TOOL_OPTIONS"] = f"{before} {option}" if before else option
    try:
        yield
    finally:
        if before is None:
            del os.environ["JAVA_TOOL_OPTIONS"]
        else:
            os.environ["JAVA_TOOL_OPTIONS"] = before


@contextlib.contextmanager
def open_bench(args: argparse.Namespace) -> Iterator[Bench]:
    """What every measurement shares: ``--bootstrap``'s broker or one started here (with a
    GC log), the model, the peer's interpreter if ``peer`` is measured; all stopped on exit."""
    with contextlib.ExitStack() as stack:
        peer = None
        if "peer" in args.systems:
            peer = Path(args.peer_python) if args.peer_python else peer_python()
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        record = model_record(args.model)
        (tmp / "model.onnx").write_bytes(decode_envelope(record).onnx)
        bootstrap, broker_pid, gc_log = args.bootstrap, None, None
        if not bootstrap:
            from pipeline.broker import BrokerConfig, LocalBroker

            gc_log = tmp / "broker-gc.log"
            with java_options(f"-Xlog:gc:file={gc_log}:time"):  # the broker's JVM inherits it
                config = BrokerConfig(data_dir=tmp / "kafka", port=0)
                broker = stack.enter_context(LocalBroker(config))
            bootstrap = broker.bootstrap
            state = broker.state()
            broker_pid = state.nodes[0].pid if state else None
        procs = Procs()
        stack.callback(procs.close)
        yield Bench(args, bootstrap, procs, record, tmp / "model.onnx", peer, broker_pid, gc_log)


def exit_cleanly_on_signals() -> None:
    """SIGTERM and SIGINT end in an exception, so the finally blocks stop everything the
    bench started (SIGINT even if the bench was started ignoring it)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)


def main() -> None:
    args = parse_args()
    exit_cleanly_on_signals()
    with open_bench(args) as b:
        rows: list[dict] = []
        backlog: list[dict] = []
        idle: list[dict] = []
        if args.warmup > 0:  # a fresh broker's JIT would otherwise tax whoever runs first
            print(f"warm-up: {args.warmup:g} s of floor load, discarded", flush=True)
            measure_rate(b, "floor", max(args.rates, default=1000), args.warmup)
        for run in range(1, args.runs + 1):
            k = (run - 1) % len(args.systems)
            order = args.systems[k:] + args.systems[:k]  # who goes first rotates
            jobs: list[tuple[str, int | str]] = [(s, rate) for rate in args.rates for s in order]
            jobs += [(s, "backlog") for s in order] if args.backlog else []
            jobs += [(s, "idle") for s in order] if args.idle else []
            for s, rate in jobs:
                if rate == "backlog":
                    backlog.append(row := {"run": run, **measure_backlog(b, s)})
                elif rate == "idle":
                    idle.append(row := {"run": run, **measure_idle(b, s)})
                else:
                    rows.append(row := {"run": run, **measure_rate(b, s, int(rate))})
                label = rate if isinstance(rate, str) else f"{rate}/s"
                if row["exit_code"] is not None:
                    print(f"warning: {s} exited with {row['exit_code']} during the measurement")
                print(f"run {run}: {s} {label}: {json.dumps(row)}", flush=True)
        print()
        print(tables(rows, backlog, args.systems, idle))
        if args.json:
            config = {k: v for k, v in vars(args).items() if k != "json"}
            config["peer_requirements"] = PEER_REQUIREMENTS
            doc = {"config": config, "bootstrap": b.bootstrap, "rates": rows, "backlog": backlog}
            doc["idle"] = idle
            Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
            print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
