"""GPU checks for the device run: ONNX Runtime (CUDA EP when the installed build has it)
beside torch eager through ``bench_onnx.measure``, and an NCCL DDP training step of the
trainer's model. Builds nothing on the GPU machine; the ONNX file is exported here first
(its image lacks the ``onnx`` package):

    python bench/gpu_check.py --export .gpu/model.onnx            # here, on CPU
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_onnx

from schemas.model_spec import DEFAULT_SPEC
from trainer.model import build_model

DDP_BATCH = 512


def _ddp_worker(rank: int, world: int, steps: int, queue) -> None:  # type: ignore[no-untyped-def]
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    dist.init_process_group("nccl", rank=rank, world_size=world)
    torch.cuda.set_device(rank)
    model = DDP(build_model(DEFAULT_SPEC, bench_onnx.HIDDEN, bench_onnx.SEED).cuda(), [rank])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.from_numpy(bench_onnx.windows(DDP_BATCH, np.random.default_rng(rank))).cuda()
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
    if rank == 0:
        queue.put(
            {
                "backend": dist.get_backend(),
                "world_size": world,
                "batch_per_rank": DDP_BATCH,
                "step_ms_p50": float(np.median(times) * 1e3),
                "samples_per_s_per_rank": float(DDP_BATCH / np.median(times)),
                "weights_equal_across_ranks": all(torch.equal(gathered[0], g) for g in gathered),
                "final_loss": float(loss.item()),
            }
        )
    dist.destroy_process_group()


def ddp_nccl(steps: int) -> dict[str, object]:
    import torch.multiprocessing as mp

    world = torch.cuda.device_count()
    queue = mp.get_context("spawn").Queue()
    mp.start_processes(_ddp_worker, args=(world, steps, queue), nprocs=world, start_method="spawn")
    return queue.get(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, help="export the model to this path and stop")
    parser.add_argument("--model", type=Path, default=Path(".gpu/model.onnx"))
    parser.add_argument("--out", type=Path, default=Path("gpu.json"))
    parser.add_argument("--iters", type=int, default=2000)
    args = parser.parse_args()
    if args.export:
        args.export.parent.mkdir(parents=True, exist_ok=True)
        args.export.write_bytes(bench_onnx.exported_model())
        return
    import onnxruntime as ort

    onnx_bytes = args.model.read_bytes()
    report: dict[str, object] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "ort_providers": ort.get_available_providers(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    checks = {
        "latency_cuda": lambda: bench_onnx.measure(onnx_bytes, "cuda", args.iters),
        "latency_cpu": lambda: bench_onnx.measure(onnx_bytes, "cpu", args.iters),
        "ddp_nccl": lambda: ddp_nccl(200),
    }
    for name, check in checks.items():
        t0 = time.perf_counter()
        try:
            report[name] = check()
        except Exception as exc:  # record and go on: one failing check must not hide the rest
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"{name}: {time.perf_counter() - t0:.1f}s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
