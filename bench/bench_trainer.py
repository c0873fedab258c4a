"""Trainer figures: samples/s per rank and 1->2 rank scaling; model freshness; online ADE/FDE.

    .venv/bin/python bench/bench_trainer.py scaling [--seconds 10]
    .venv/bin/python bench/bench_trainer.py stream --minutes 3    # needs DRIVESTREAM_BOOTSTRAP

``scaling`` runs the real lockstep DDP loop (gloo, CPU, 1 thread per rank) on in-memory
samples with no cadence cap. ``stream`` starts ``ps`` + ``train --nproc 2`` against the
broker, replays a simulated fleet in real time, and reads every model from ``models``:
freshness = envelope created_ns - wall-clock produce stamp of the newest label frame in it.
"""

from __future__ import annotations

import argparse
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ingest.simulator import SimConfig, simulate
from schemas.envelope import ModelEnvelope, decode_envelope
from schemas.headers import now_ns
from schemas.kafka import Consumer, KafkaSettings, Producer, ensure_topics
from schemas.model_spec import DEFAULT_SPEC
from schemas.sensor import encode_frames, frame_headers, table_to_frames
from schemas.topics import TopicNames, default_topics
from trainer.config import TrainConfig
from trainer.loop import NullSource, TrainLoop
from trainer.metrics import PREDICTORS
from trainer.windowing import Windower

REPO = Path(__file__).resolve().parents[1]


def _scaling_rank(rank: int, world: int, store: str, seconds: float, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    table, _ = simulate(SimConfig(vehicles=16, duration_s=60, seed=rank))
    samples = Windower(DEFAULT_SPEC).add_many(table_to_frames(table))
    with tempfile.TemporaryDirectory() as ckpt:
        cfg = TrainConfig(checkpoint_dir=ckpt, sync_every_steps=10_000, replay_capacity=20_000)
        loop = TrainLoop(cfg, DEFAULT_SPEC, NullSource(), None)
        loop.replay.add(samples)
        for _ in range(20):  # warm-up
            loop.step()
        dist.barrier()
        t0, steps = time.perf_counter(), 0
        while True:
            flag = torch.tensor([float(time.perf_counter() - t0 >= seconds)])
            dist.all_reduce(flag)
            if flag.item() > 0:
                break
            loop.step()
            steps += 1
        elapsed = time.perf_counter() - t0
    Path(out, f"r{rank}").write_bytes(pickle.dumps((steps, elapsed, cfg.batch_size)))
    dist.destroy_process_group()


def scaling(seconds: float) -> None:
    t = time.perf_counter()
    table, _ = simulate(SimConfig(vehicles=16, duration_s=60, seed=0))
    frames = table_to_frames(table)
    t_sim = time.perf_counter() - t
    t = time.perf_counter()
    n = len(Windower(DEFAULT_SPEC).add_many(frames))
    print(
        f"windowing: {len(frames) / (time.perf_counter() - t):,.0f} frames/s -> {n} samples "
        f"(simulate {t_sim:.2f} s)"
    )
    per_world = {}
    for world in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            mp.start_processes(
                _scaling_rank,
                args=(world, f"{tmp}/store", seconds, tmp),
                nprocs=world,
                start_method="spawn",
            )
            rows = [pickle.loads(Path(tmp, f"r{r}").read_bytes()) for r in range(world)]
        rates = [steps * batch / elapsed for steps, elapsed, batch in rows]
        per_world[world] = sum(rates)
        steps = rows[0][0] / rows[0][1]
        print(
            f"world {world}: {steps:.0f} lockstep steps/s, samples/s per rank "
            + ", ".join(f"{r:,.0f}" for r in rates)
            + f", total {sum(rates):,.0f}"
        )
    print(
        f"1 -> 2 rank scaling: {per_world[2] / per_world[1]:.2f}x total samples/s "
        f"(cores on this machine: {os.cpu_count()})"
    )


def _replay(settings: KafkaSettings, topic: str, minutes: float, done: threading.Event) -> None:
    table, _ = simulate(SimConfig(vehicles=32, duration_s=minutes * 60, seed=11))
    frames = table_to_frames(table)
    t0e, t0w = frames[0].t_event_ns, time.monotonic()
    with Producer(settings) as p:
        for f in frames:
            due = (f.t_event_ns - t0e) / 1e9 - (time.monotonic() - t0w)
            if due > 0:
                time.sleep(due)
            p.send(topic, encode_frames([f]), key=f.vehicle_id, headers=frame_headers(now_ns()))
    done.set()


def stream(minutes: float) -> None:
    settings = KafkaSettings.from_env()
    names = TopicNames(prefix=f"bench{uuid.uuid4().hex[:8]}-")
    ensure_topics(settings, default_topics(4, names.prefix))
    tmp = Path(tempfile.mkdtemp(prefix="bench-trainer-"))
    common = ["--bootstrap", settings.bootstrap, "--topic-prefix", names.prefix]
    log = (tmp / "services.log").open("ab")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def run(args: list[str]) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )

    ps = run(
        [
            "trainer.ps",
            *common,
            "--checkpoint-dir",
            str(tmp / "ps"),
            "--registry-dir",
            str(tmp / "registry"),
            "--export-every-s",
            "2",
        ]
    )
    train = run(
        ["trainer", "train", *common, "--nproc", "2", "--checkpoint-dir", str(tmp / "train")]
    )
    done = threading.Event()
    envelopes = []
    start_ns = now_ns()
    try:
        with Consumer(settings) as c:
            c.assign(names.models, [0])
            threading.Thread(
                target=_replay, args=(settings, names.sensors, minutes, done), daemon=True
            ).start()
            tail_end = None
            while tail_end is None or time.monotonic() < tail_end:
                for m in c.poll(500):
                    envelopes.append((decode_envelope(m.value), now_ns()))
                if done.is_set() and tail_end is None:
                    tail_end = time.monotonic() + 8
    finally:
        for p in (train, ps):
            p.send_signal(signal.SIGTERM)
        for p in (train, ps):
            p.wait(timeout=60)
    fresh = [
        (
            (e.created_ns - e.metrics["trained_until_produce_ns"]) / 1e6,
            (seen - e.metrics["trained_until_produce_ns"]) / 1e6,
        )
        for e, seen in envelopes
        if e.metrics.get("trained_until_produce_ns", 0) > 0
    ]
    pub = np.array([f[0] for f in fresh])
    seen = np.array([f[1] for f in fresh])
    print(
        f"stream: {minutes:g} min real-time, 32 vehicles at 10 Hz, ps + train --nproc 2; "
        f"{len(envelopes)} models (logs: {tmp})"
    )
    print(
        f"freshness (newest label frame produced -> model published), {len(pub)} models: "
        f"p50 {np.percentile(pub, 50):.0f} ms, p99 {np.percentile(pub, 99):.0f} ms; "
        f"-> model consumed: p50 {np.percentile(seen, 50):.0f} ms, "
        f"p99 {np.percentile(seen, 99):.0f} ms"
    )
    for mark in sorted({min(2.0, minutes), minutes}):
        deadline = start_ns + int(mark * 60e9)
        in_time = [e for e, _ in envelopes if e.created_ns <= deadline] or [envelopes[0][0]]
        _print_metrics(in_time[-1], f"after {mark:g} min of streaming")


def _print_metrics(env: ModelEnvelope, when: str) -> None:
    m = env.metrics
    print(
        f"online test-then-train metrics {when}: v{env.version} ({env.samples} samples "
        f"trained, holdout samples weight {m.get('holdout.samples', 0):.0f}, decayed window):"
    )
    print(
        "split    predictor " + "".join(f" ADE@{h:g}  FDE@{h:g} " for h in DEFAULT_SPEC.horizons_s)
    )
    for split in ("holdout", "train"):
        for p in PREDICTORS:
            cells = "".join(
                f" {m.get(f'{split}.{p}.ade@{h:g}', float('nan')):6.2f} "
                f"{m.get(f'{split}.{p}.fde@{h:g}', float('nan')):6.2f}"
                for h in DEFAULT_SPEC.horizons_s
            )
            print(f"{split:8s} {p:9s}{cells}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("scaling")
    s.add_argument("--seconds", type=float, default=10.0)
    st = sub.add_parser("stream")
    st.add_argument("--minutes", type=float, default=3.0)
    args = parser.parse_args()
    if args.what == "scaling":
        scaling(args.seconds)
    else:
        stream(args.minutes)


if __name__ == "__main__":
    main()
