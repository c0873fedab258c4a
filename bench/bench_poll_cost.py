"""CPU of the serving loop per poll pattern, in-process: no broker, warm caches.

The loop (``InferenceService.step``) runs over the unit tests' in-memory consumer and
producer with the peer bench's model (a session on the CPU, as serve builds it). Every
burst carries one frame of each of ``sum(split)`` vehicles at 10 Hz, handed over in polls
of the ``split`` sizes ("1,4": a poll of one frame, then one of four: how the peer bench's
load reaches serve at 1,000/s). With ``--peer`` the quixstreams peer's own per-frame code
(its ``Predictor``: decode, history, model, encode; no quixstreams, no Kafka) is timed on
the same frames in its virtualenv. Thread CPU, medians of ``--runs`` blocks.

``--gap-ms`` sleeps that long before each poll (and before each of the peer's frames), as
a service does between polls at low rates: the loop then starts each poll with caches and
predictors that other work (or an idle, descheduled vCPU) has cooled. Sleep is not counted;
what a cold poll costs more than a warm one is. On the 2-core VM of BENCHMARKS.md a poll
after a 2 ms sleep cost about twice a warm one.

    python bench/bench_poll_cost.py --splits 1 1,4 5 --bursts 3000 --runs 7 [--gap-ms 0 2] [--peer]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import bench_peer as bp  # bench/ is on sys.path as a script; bench_e2e adds the repo root

from inference.gate import MODEL, Verdict
from inference.runtime import LoadedModel, build_session
from inference.service import settle_heap
from schemas.envelope import decode_envelope
from schemas.sensor import SensorFrame
from tests.unit import test_inference_service as fakes

DT_NS = 100_000_000
WARM_BURSTS = 400

_PEER = """
import sys, time
sys.path[:0] = [{root!r} + "/bench/peer", {root!r} + "/bench", {root!r}]
import quix_serve, synthetic
from schemas.headers import now_ns
from schemas.sensor import encode_frames, frame_headers
p = quix_serve.Predictor(quix_serve.session({model!r}), 1, "m")
n, runs, vehicles, gap = {frames}, {runs}, {vehicles}, {gap_s}
recs = [synthetic.frame(i, vehicles, heading_step=0.01) for i in range(n * (runs + 1))]
recs = [(encode_frames([f]), list(frame_headers(now_ns()))) for f in recs]
for v, h in recs[:n]:
    p(v, None, 0, h)
for k in range(1, runs + 1):
    t0 = time.thread_time()
    for v, h in recs[k * n : (k + 1) * n]:
        if gap:
            time.sleep(gap)
        p(v, None, 0, h)
    print((time.thread_time() - t0) / n * 1e6)
"""


def serve_cost(
    onnx: bytes, split: list[int], bursts: int, runs: int, gap_s: float = 0.0
) -> list[float]:
    """CPU µs per burst of the serving loop, one figure per block of ``bursts``; each poll
    after ``gap_s`` of sleep."""
    env = decode_envelope(onnx)
    session, provider = build_session(env.onnx, "cpu", 1)
    model = LoadedModel(envelope=env, session=session, provider=provider)
    model.warm_up((1, 2, 4, 8))
    svc, _, consumer = fakes.make_service(gate=False, budget_ms=3_600_000)
    svc.model = model
    svc.history.set_spec(model.spec)
    svc._verdict = Verdict(predictor=MODEL, version=model.version)
    offset = 0

    def polls(b: int) -> list[list]:
        nonlocal offset
        out, v = [], 0
        for size in split:
            poll = []
            for k in range(v, v + size):
                t = 10**9 + b * DT_NS
                f = SensorFrame(f"veh-{k:03d}", b, t, float(b), 0.0, 10.0, 0.0, 0.0, 0.0)
                offset += 1
                poll.append(fakes.record(offset, [f], partition=k % 2))
            out.append(poll)
            v += size
        return out

    def run(block: list[list[list]]) -> None:
        for burst in block:
            for poll in burst:
                if gap_s:
                    time.sleep(gap_s)
                consumer.batches = [poll]
                svc.step()
                while len(svc.batcher):
                    svc.step()

    run([polls(b) for b in range(WARM_BURSTS)])
    settle_heap()  # as serve's open() does: no full GC pass over start-up's objects
    out = []
    for k in range(runs):
        first = WARM_BURSTS + k * bursts
        block = [polls(b) for b in range(first, first + bursts)]
        t0 = time.thread_time()
        run(block)
        out.append((time.thread_time() - t0) / bursts * 1e6)
    return out


def peer_cost(
    onnx: bytes, vehicles: int, frames: int, runs: int, gap_s: float = 0.0
) -> list[float]:
    """CPU µs per frame of the peer's Predictor, one figure per block of ``frames``; each
    frame after ``gap_s`` of sleep."""
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model.onnx"
        model.write_bytes(decode_envelope(onnx).onnx)
        code = _PEER.format(
            root=str(bp.ROOT),
            model=str(model),
            frames=frames,
            runs=runs,
            vehicles=vehicles,
            gap_s=gap_s,
        )
        done = subprocess.run(
            [str(bp.peer_python()), "-c", code], capture_output=True, text=True, check=True
        )
    return [float(line) for line in done.stdout.split()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--splits", nargs="+", default=["1", "1,4", "5"], help="poll sizes per burst")
    p.add_argument("--bursts", type=int, default=3000, help="bursts per timed block")
    p.add_argument("--runs", type=int, default=7, help="timed blocks (median reported)")
    p.add_argument("--model", choices=("cv", "trajectory"), default="cv")
    p.add_argument("--peer", action="store_true", help="also the peer's per-frame code")
    p.add_argument(
        "--gap-ms", nargs="+", type=float, default=[0.0], help="sleep before each poll, ms"
    )
    args = p.parse_args()
    onnx = bp.model_record(args.model)
    print(f"| gap | polls per burst | CPU per burst | per poll | per frame |  ({args.model} model)")
    print("|---|---|---|---|---|")
    for gap_ms in args.gap_ms:
        gap = f"{gap_ms:g} ms"
        for split in args.splits:
            sizes = [int(s) for s in split.split(",")]
            us = statistics.median(serve_cost(onnx, sizes, args.bursts, args.runs, gap_ms / 1e3))
            per_poll, per_frame = us / len(sizes), us / sum(sizes)
            row = f"| {gap} | {split} | {us:.1f} µs | {per_poll:.1f} µs | {per_frame:.1f} µs |"
            print(row, flush=True)
        if args.peer:
            frames = args.bursts * 5 if not gap_ms else args.bursts
            us = statistics.median(peer_cost(onnx, 100, frames, args.runs, gap_ms / 1e3))
            print(f"| {gap} | peer's Predictor, 1 frame per call | | | {us:.1f} µs |", flush=True)


if __name__ == "__main__":
    main()
