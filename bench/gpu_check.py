"""GPU checks for a machine with CUDA (the device run): ONNX Runtime's CUDA execution
provider through the inference service's own session code (I/O binding, warm-up) beside
the CPU provider and torch eager, CUDA-vs-CPU output equality, and an NCCL DDP training
step of the trainer's model. Builds nothing; the ONNX file is exported beforehand:

    python bench/gpu_check.py --export .gpu/model.onnx     # here, on CPU
    python bench/gpu_check.py --model .gpu/model.onnx --out $OUT/gpu.json   # on the GPU box
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas.model_spec import DEFAULT_SPEC

BATCHES = (1, 8, 64, 256)
HIDDEN, SEED = 128, 0


def windows(batch: int, rng: np.random.Generator) -> np.ndarray:
    spec = DEFAULT_SPEC
    x = np.zeros((batch, spec.history, len(spec.features)), np.float32)
    x[:, :, 0] = np.linspace(-(spec.history - 1) / spec.rate_hz, 0, spec.history)
    speed = rng.uniform(0, 30, (batch, 1))
    heading = rng.uniform(-np.pi, np.pi, (batch, 1))
    x[:, :, 1] = 100 + speed * x[:, :, 0] * np.cos(heading)
    x[:, :, 2] = -50 + speed * x[:, :, 0] * np.sin(heading)
    x[:, :, 3], x[:, :, 4] = speed, heading
    x[:, :, 5] = rng.normal(0, 0.1, (batch, 1))
    return x


def timed(fn, rounds: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    for _ in range(20):
        fn()
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    arr = np.asarray(samples) / 1e3
    return {"p50_us": float(np.percentile(arr, 50)), "p99_us": float(np.percentile(arr, 99))}


def export(path: Path) -> None:
    from trainer.export import OnnxExporter
    from trainer.model import build_model, trainable_state

    model = build_model(DEFAULT_SPEC, HIDDEN, SEED)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(OnnxExporter(model, DEFAULT_SPEC).export(trainable_state(model)))
    print(f"wrote {path}")


def onnx_latency(onnx_bytes: bytes, rounds: int) -> dict[str, object]:
    from inference.runtime import LoadedModel, build_session, quiet_ort
    from schemas.envelope import ModelEnvelope

    quiet_ort()
    env = ModelEnvelope(
        name="gpu-check",
        version=1,
        parent_version=0,
        created_ns=0,
        trained_until_ns=0,
        steps=0,
        samples=0,
        input_spec=DEFAULT_SPEC,
        onnx=onnx_bytes,
    )
    rng = np.random.default_rng(0)
    out: dict[str, object] = {}
    outputs = {}
    for device in ("cuda", "cpu"):
        session, provider = build_session(onnx_bytes, device=device, intra_op_threads=1)
        loaded = LoadedModel(env, session, provider)
        t0 = time.perf_counter()
        loaded.warm_up(BATCHES)
        warm_s = time.perf_counter() - t0
        per_batch = {}
        for b in BATCHES:
            x = windows(b, rng)
            per_batch[str(b)] = timed(lambda x=x, m=loaded: m.run(x), rounds)
        probe = windows(256, np.random.default_rng(1))
        outputs[device] = loaded.run(probe)
        out[device] = {"provider": provider, "warm_up_s": warm_s, "latency": per_batch}
    out["max_abs_diff_cuda_vs_cpu_m"] = float(np.abs(outputs["cuda"] - outputs["cpu"]).max())
    return out


def torch_latency(rounds: int) -> dict[str, object]:
    from trainer.model import build_model

    rng = np.random.default_rng(0)
    out: dict[str, object] = {}
    for device in ("cuda", "cpu"):
        model = build_model(DEFAULT_SPEC, HIDDEN, SEED).to(device).eval()
        per_batch = {}
        for b in BATCHES:
            x = torch.from_numpy(windows(b, rng))

            def run(x: torch.Tensor = x, m: torch.nn.Module = model, d: str = device) -> None:
                with torch.no_grad():
                    y = m(x.to(d, non_blocking=True))
                    y.cpu()

            per_batch[str(b)] = timed(run, rounds)
        out[device] = per_batch
    return out


def _ddp_worker(rank: int, world: int, steps: int, queue) -> None:  # type: ignore[no-untyped-def]
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from trainer.model import build_model

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    dist.init_process_group("nccl", rank=rank, world_size=world)
    torch.cuda.set_device(rank)
    model = DDP(build_model(DEFAULT_SPEC, HIDDEN, SEED).cuda(), device_ids=[rank])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(rank)
    x = torch.from_numpy(windows(512, rng)).cuda()
    target = model.module(x).detach() + 0.5
    times = []
    for i in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = torch.nn.functional.mse_loss(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        if i >= 10:
            times.append(time.perf_counter() - t0)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    equal = all(torch.equal(gathered[0], g) for g in gathered)
    if rank == 0:
        queue.put(
            {
                "backend": dist.get_backend(),
                "world_size": world,
                "batch_per_rank": 512,
                "step_ms_p50": float(np.median(times) * 1e3),
                "samples_per_s_per_rank": float(512 / np.median(times)),
                "weights_equal_across_ranks": bool(equal),
                "final_loss": float(loss.item()),
            }
        )
    dist.destroy_process_group()


def ddp_nccl(steps: int) -> dict[str, object]:
    import torch.multiprocessing as mp

    world = torch.cuda.device_count()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(_ddp_worker, args=(world, steps, queue), nprocs=world, start_method="spawn")
    return queue.get(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, help="export the model to this path and stop")
    parser.add_argument("--model", type=Path, default=Path(".gpu/model.onnx"))
    parser.add_argument("--out", type=Path, default=Path("gpu.json"))
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    if args.export:
        export(args.export)
        return
    import onnxruntime as ort

    report: dict[str, object] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "ort_providers": ort.get_available_providers(),
    }
    for name, fn in (
        ("onnxruntime", lambda: onnx_latency(args.model.read_bytes(), args.rounds)),
        ("torch_eager", lambda: torch_latency(args.rounds)),
        ("ddp_nccl", lambda: ddp_nccl(200)),
    ):
        t0 = time.perf_counter()
        try:
            report[name] = fn()
        except Exception as exc:  # record and go on: one failing check must not hide the rest
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"{name}: {time.perf_counter() - t0:.1f}s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
