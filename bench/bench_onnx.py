"""ONNX Runtime vs torch eager latency by batch size, on the trainer's own model.

ONNX Runtime goes through ``inference.runtime`` exactly as serving does (CUDA EP with I/O
binding when asked for and usable, else the CPU EP with intra_op 1); torch eager runs the
same weights on the same device (1 thread on CPU). Times include the copy of the batch in
and the result out, as in serving.

    python bench/bench_onnx.py [--device cpu|cuda] [--iters 2000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.runtime import LoadedModel, build_session, quiet_ort
from schemas.envelope import ModelEnvelope
from schemas.model_spec import DEFAULT_SPEC
from trainer.model import build_model

BATCHES = (1, 8, 64, 256)
HIDDEN, SEED = 128, 0


def windows(batch: int, rng: np.random.Generator) -> np.ndarray:
    """Plausible raw input windows: vehicles at up to 30 m/s, 100 m from the origin."""
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


def timed(fn, iters: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    for _ in range(20):
        fn()
    samples = np.empty(iters)
    for i in range(iters):
        t0 = time.perf_counter_ns()
        fn()
        samples[i] = time.perf_counter_ns() - t0
    return {
        "p50_us": float(np.percentile(samples, 50) / 1e3),
        "p99_us": float(np.percentile(samples, 99) / 1e3),
    }


def exported_model() -> bytes:
    """The trainer's version-0 model as the parameter server would export it."""
    from trainer.export import OnnxExporter
    from trainer.model import trainable_state

    model = build_model(DEFAULT_SPEC, HIDDEN, SEED)
    return OnnxExporter(model, DEFAULT_SPEC).export(trainable_state(model))


def measure(onnx_bytes: bytes, device: str, iters: int) -> dict[str, object]:
    """Per-batch p50/p99 of ONNX Runtime and torch eager on ``device`` (cpu | cuda)."""
    quiet_ort()
    envelope = ModelEnvelope(
        name="bench",
        version=1,
        parent_version=0,
        created_ns=0,
        trained_until_ns=0,
        steps=0,
        samples=0,
        input_spec=DEFAULT_SPEC,
        onnx=onnx_bytes,
    )
    session, provider = build_session(onnx_bytes, device=device, intra_op_threads=1)
    served = LoadedModel(envelope, session, provider)
    served.warm_up(BATCHES)
    if device == "cpu":
        torch.set_num_threads(1)
    net = build_model(DEFAULT_SPEC, HIDDEN, SEED).to(device).eval()
    rng = np.random.default_rng(0)
    rows = {}
    max_diff = 0.0
    for b in BATCHES:
        x = windows(b, rng)
        with torch.inference_mode():
            eager = lambda x=x: net(torch.from_numpy(x).to(device)).cpu().numpy()  # noqa: E731
            rows[str(b)] = {
                "onnxruntime": timed(lambda x=x: served.run(x), iters),
                "torch_eager": timed(eager, iters),
            }
            max_diff = max(max_diff, float(np.abs(served.run(x) - eager()).max()))
    return {
        "provider": provider,
        "torch_device": device,
        "by_batch": rows,
        "max_abs_diff_ort_vs_torch_m": max_diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--iters", type=int, default=2000)
    args = parser.parse_args()
    result = measure(exported_model(), args.device, args.iters)
    print(f"provider {result['provider']}; torch on {args.device}")
    print(f"{'batch':>5} | {'ORT p50':>8} {'ORT p99':>8} | {'torch p50':>9} {'torch p99':>9}  (µs)")
    for b, row in result["by_batch"].items():  # type: ignore[union-attr]
        o, t = row["onnxruntime"], row["torch_eager"]
        ort_cols = f"{o['p50_us']:8.1f} {o['p99_us']:8.1f}"
        print(f"{b:>5} | {ort_cols} | {t['p50_us']:9.1f} {t['p99_us']:9.1f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
