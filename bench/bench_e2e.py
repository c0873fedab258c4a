"""End-to-end latency of `python -m inference`: frame produced -> its prediction consumed.

For each rate, the same run first measures the raw two-hop Kafka floor (produce ->
consume -> produce -> consume through an echo process doing no work), then the service
(also its own process) on the same broker: p50/p99 of (prediction consumed - t_produce_ns),
the fallback share by reason, and the pause caused by a model swap published mid-run
(the serving loop's swap time from /metrics, and p99/max latency in the 2 s after it).

    python bench/bench_e2e.py [--bootstrap HOST:PORT] [--rates 1000,5000] [--duration 8]

Without --bootstrap a local broker (pipeline.broker) is started for the run.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import synthetic  # noqa: E402  (bench/ is on sys.path when run as a script)

from pipeline.processes import free_port  # noqa: E402
from pipeline.report import STAGES, Received, stage_ns  # noqa: E402
from schemas.envelope import encode_envelope, envelope_headers  # noqa: E402
from schemas.headers import T_PRODUCE_NS, now_ns, read_stamp  # noqa: E402
from schemas.kafka import Consumer, KafkaSettings, Message, Producer, ensure_topics  # noqa: E402
from schemas.prediction import decode_prediction  # noqa: E402
from schemas.sensor import encode_frames, frame_headers  # noqa: E402
from schemas.topics import TopicNames, TopicSpec, default_topics  # noqa: E402
from tests.model_fixtures import TEST_PUBLIC  # noqa: E402

WARMUP_S = 1.0

Answer = tuple[int, int, str, str]
"""A measured answer: (its frame's t_produce_ns, received ns, source, fallback reason)."""


def burn(ns: int) -> None:
    """Spend ``ns`` of this thread's CPU time, and nothing else."""
    until = time.thread_time_ns() + ns
    while time.thread_time_ns() < until:
        pass


def echo_worker(bootstrap: str, src: str, dst: str, busy_us: float = 0.0) -> None:
    """The floor's middle hop: consume and re-produce every record unchanged. With
    ``busy_us``, each poll that brought records first burns that much thread CPU: a
    service's work per poll, without any of its code."""
    settings = KafkaSettings(bootstrap=bootstrap)
    busy_ns = int(busy_us * 1e3)
    with Consumer(settings, [src], f"echo-{src}") as c, Producer(settings).connect() as p:
        while not c.assignment():
            c.poll(timeout_ms=50)
        print("ready", flush=True)
        while True:
            msgs = c.poll(timeout_ms=100, max_records=500)
            if msgs and busy_ns:
                burn(busy_ns)
            for m in msgs:
                p.send(dst, m.value, key=m.key, headers=m.headers)


def load(
    settings: KafkaSettings,
    src: str,
    dst: str,
    rate: int,
    duration: float,
    at: tuple[float, Callable[[Producer], None]] | None = None,
    budget_ms: float = 50.0,
) -> dict:
    """Send frames at ``rate`` (vehicles at 10 Hz) and time their answers on ``dst``;
    ``over_budget_share``: answers later than ``budget_ms`` after their frame was sent."""
    vehicles = max(1, rate // 10)
    total = int(rate * duration)
    got: list[Answer] = []
    stamps: list[tuple[int, ...]] = []  # per prediction: its frame's stages (report.STAGES)
    c = Consumer(settings, group_id=None)
    c.assign(dst, sorted(c.partitions_for(dst)))
    done = threading.Event()

    started: list[int] = []

    def produce() -> None:
        with Producer(settings).connect() as p:
            started.append(now_ns())  # the warm-up cut counts from the first frame
            t0 = time.monotonic()
            fired = at is None
            for due in paced(rate, total):
                for i in due:
                    send_frame(p, src, i, vehicles)
                if not fired and time.monotonic() - t0 >= at[0]:
                    at[1](p)  # this connected producer: a new one would stall the load
                    fired = True
        done.set()

    t_start = now_ns()
    threading.Thread(target=produce, daemon=True).start()
    deadline = time.monotonic() + duration + 30
    while len(got) < total and time.monotonic() < deadline:
        msgs = c.poll(timeout_ms=100, max_records=2000)
        now = now_ns()  # every record of the poll was here by now: stamped before decoding any
        for m in msgs:
            answer, stages = receive(m, now)
            got.append(answer)
            if stages is not None:
                stamps.append(stages)
    c.close()
    done.wait(5)
    t_start = started[0] if started else t_start
    is_steady = [g[0] - t_start > WARMUP_S * 1e9 for g in got]
    out = summarize(total, got, stamps, is_steady, t_start, budget_ms)
    if at is not None:
        t_swap = t_start + at[0] * 1e9
        near = np.array([r - p for p, r, _, _ in got if t_swap <= p < t_swap + 2e9]) / 1e6
        if len(near):
            out["after_swap_p99_ms"] = round(float(np.percentile(near, 99)), 2)
            out["after_swap_max_ms"] = round(float(near.max()), 2)
    return out


def paced(rate: int, total: int, tick_s: float = 0.005) -> Iterator[range]:
    """The open-loop schedule of ``total`` frames at ``rate``/s from the first step: each
    step yields the indices due by now, then sleeps ``tick_s``."""
    t0, sent = time.monotonic(), 0
    while sent < total:
        due = min(total, int((time.monotonic() - t0) * rate))
        yield range(sent, due)
        sent = due
        time.sleep(tick_s)


def send_frame(p: Producer, topic: str, i: int, vehicles: int) -> None:
    """Frame ``i`` of the load's fleet of ``vehicles`` (each at 10 Hz), stamped as sent."""
    f = synthetic.frame(i, vehicles, heading_step=0.01)
    p.send(topic, encode_frames([f]), key=f.vehicle_id, headers=frame_headers(now_ns()))


def receive(m: Message, now: int) -> tuple[Answer, tuple[int, ...] | None]:
    """A record on a measured topic, received at ``now``: a prediction (with its stages,
    report.STAGES) on a topic named *predictions, else a frame the echo passed on."""
    if m.topic.endswith("predictions"):
        p = decode_prediction(m.value)
        return (p.t_produce_ns, now, p.source, p.reason), tuple(stage_ns(Received(p, now)).values())
    return (read_stamp(m.headers, T_PRODUCE_NS), now, "echo", ""), None


def summarize(
    sent: int,
    got: list[Answer],
    stamps: list[tuple[int, ...]],
    is_steady: list[bool],
    t_start: int,
    budget_ms: float,
) -> dict:
    """Latency, fallback and per-second figures of the answers ``got`` to ``sent`` frames;
    all but the per-second p99s count only the steady ones (``is_steady``, per answer)."""
    steady = list(itertools.compress(got, is_steady))
    lat = np.array([r - p for p, r, _, _ in steady]) / 1e6
    reasons: dict[str, int] = {}
    for _, _, src_, reason in steady:
        if src_ == "fallback":
            reasons[reason] = reasons.get(reason, 0) + 1
    out = {
        "sent": sent,
        "answered": len(got),
        "p50_ms": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
        "max_ms": round(float(lat.max()), 2) if len(lat) else None,
        "over_budget_share": round(float((lat > budget_ms).mean()), 4) if len(lat) else None,
        "fallback_share": round(sum(reasons.values()) / max(1, len(steady)), 4),
        "fallback_reasons": reasons,
    }
    if stamps and len(stamps) == len(got):
        out.update(stage_split(list(itertools.compress(stamps, is_steady))))
    # p99 per second of the run (by produce time): flat when latency stays bounded,
    # rising when the service falls further behind
    by_second: dict[int, list[float]] = {}
    for p, r, _, _ in got:
        by_second.setdefault(int((p - t_start) // 1e9), []).append((r - p) / 1e6)
    out["p99_by_second_ms"] = [
        round(float(np.percentile(by_second[k], 99)), 1) for k in sorted(by_second)
    ]
    return out


def stage_split(stamps: list[tuple[int, ...]]) -> dict:
    """Where the time of steady predictions went (their stages in ns, report.STAGES): p50
    and p99 of each stage, and each stage's mean over the answers at or above the
    end-to-end p99 (what the tail is made of)."""
    if not stamps:
        return {}
    st = np.array(stamps, np.float64) / 1e6

    def named(values: np.ndarray) -> dict[str, float]:
        return {s: round(float(v), 2) for s, v in zip(STAGES, values, strict=True)}

    e2e = st.sum(axis=1)
    return {
        "stage_p50_ms": named(np.percentile(st, 50, axis=0)),
        "stage_p99_ms": named(np.percentile(st, 99, axis=0)),
        "stage_tail_ms": named(st[e2e >= np.percentile(e2e, 99)].mean(axis=0)),
    }


def model_record(version: int) -> bytes:
    """A `models` record, built ahead: exporting it would stall this (measuring) process."""
    from tests.model_fixtures import cv_onnx, envelope

    return encode_envelope(envelope(cv_onnx(offset_m=0.01 * version), version))


HDRS = envelope_headers()


def publish_model(settings: KafkaSettings, topic: str, record: bytes) -> None:
    with Producer(settings) as p:
        p.send(topic, record, key="drivestream", headers=HDRS)


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def wait_health(
    port: int, proc: subprocess.Popen, timeout_s: float = 90, partitions: int = 4
) -> dict:
    """/healthz once serve runs model v1 on ``partitions`` partitions (at least one if 0)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"inference exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            h = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2))
            owned = len(h.get("partitions", []))
            if h.get("model_version") == 1 and (owned == partitions or (owned and not partitions)):
                return h
        time.sleep(0.2)
    raise SystemExit("inference did not become ready")


def start_serve(bootstrap: str, prefix: str, port: int, args: argparse.Namespace, *extra: str):
    """`python -m inference` on the model path (gate off), trusting the fixture key;
    ``extra``: more flags."""
    py = sys.executable
    cmd = [
        py,
        "-m",
        "inference",
        "--bootstrap",
        bootstrap,
        "--topic-prefix",
        prefix,
        "--metrics-port",
        str(port),
        "--metrics-host",
        "127.0.0.1",
        "--log-level",
        "WARNING",
        "--budget-ms",
        str(args.budget_ms),
        "--max-batch",
        str(args.max_batch),
        "--device",
        args.device,
        "--no-gate",  # measure the model path: the bench's model is CV, which physics ties
        "--trusted-keys",
        TEST_PUBLIC,  # publish_model signs with the test fixture key
        *extra,
    ]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def run_rate(bootstrap: str, rate: int, args: argparse.Namespace) -> dict:
    settings = KafkaSettings(bootstrap=bootstrap)
    names = TopicNames(prefix=f"bench{uuid.uuid4().hex[:8]}-")
    echo_in, echo_out = names.prefix + "echo-in", names.prefix + "echo-out"
    ensure_topics(
        settings,
        [
            *default_topics(4, names.prefix),
            TopicSpec(name=echo_in, partitions=4),
            TopicSpec(name=echo_out, partitions=4),
        ],
    )
    py = sys.executable
    echo = subprocess.Popen(
        [
            py,
            __file__,
            "--echo-worker",
            "--bootstrap",
            bootstrap,
            "--src",
            echo_in,
            "--dst",
            echo_out,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        echo.stdout.readline()
        floor = load(settings, echo_in, echo_out, rate, args.duration)
    finally:
        echo.terminate()
        echo.wait()
    v1, v2 = model_record(1), model_record(2)
    publish_model(settings, names.models, v1)
    port = free_port()
    serve = start_serve(bootstrap, names.prefix, port, args)
    try:
        health = wait_health(port, serve)
        swap_at = args.duration / 2
        res = load(
            settings,
            names.sensors,
            names.predictions,
            rate,
            args.duration,
            at=(swap_at, lambda p: p.send(names.models, v2, key="drivestream", headers=HDRS)),
        )
        metrics = scrape(port)
    finally:
        serve.terminate()
        serve.wait(30)
    m = re.search(r"swap_pause_seconds_sum ([0-9.e+-]+)", metrics)
    n = re.search(r"swap_pause_seconds_count ([0-9.e+-]+)", metrics)
    v = re.search(r"model_version ([0-9.e+-]+)", metrics)
    res["swap_loop_pause_ms"] = (
        round(float(m.group(1)) * 1e3 / max(1, float(n.group(1))), 4) if m and n else None
    )
    res["swaps"] = int(float(n.group(1))) if n else 0
    res["budget_misses"] = {  # the service's own count: published after t_produce + budget
        src: int(float(c))
        for src, c in re.findall(
            r'drivestream_inference_budget_misses_total\{source="(\w+)"\} ([0-9.e+-]+)', metrics
        )
    }
    res["serving_version_after"] = int(float(v.group(1))) if v else None
    res["provider"] = health.get("provider")
    return {"rate": rate, "floor_two_hop": floor, "service": res}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default=os.environ.get("DRIVESTREAM_BOOTSTRAP"))
    parser.add_argument("--rates", default="1000,5000")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--budget-ms", type=float, default=50.0)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--echo-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--dst", help=argparse.SUPPRESS)
    parser.add_argument("--busy-us", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_worker:
        echo_worker(args.bootstrap, args.src, args.dst, args.busy_us)
        return
    with contextlib.ExitStack() as stack:
        bootstrap = args.bootstrap
        if not bootstrap:
            from pipeline.broker import BrokerConfig, LocalBroker

            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            bootstrap = stack.enter_context(
                LocalBroker(BrokerConfig(data_dir=Path(tmp), port=0))
            ).bootstrap
        for rate in (int(r) for r in args.rates.split(",")):
            row = run_rate(bootstrap, rate, args)
            f, s = row["floor_two_hop"], row["service"]
            print(
                f"rate {rate}/s: e2e p50 {s['p50_ms']} p99 {s['p99_ms']} ms | two-hop floor "
                f"p50 {f['p50_ms']} p99 {f['p99_ms']} ms | fallback {s['fallback_share']:.1%} "
                f"{s['fallback_reasons']} | swap: loop pause {s['swap_loop_pause_ms']} ms, "
                f"p99 {s.get('after_swap_p99_ms')} / max {s.get('after_swap_max_ms')} ms in 2 s "
                f"after | answered {s['answered']}/{s['sent']} | budget misses "
                f"{s['budget_misses']} | p99 by second "
                f"{s['p99_by_second_ms']}",
                flush=True,
            )
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
