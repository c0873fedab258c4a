"""Export speed and fidelity: how fast a new model version is ready to publish.

Prints the one-off template export (TorchScript path), the per-version cost of patching
initializers + serialising, the full check a receiver would do (onnx.checker + ORT session),
and the max |ONNX - torch| on random windows.

    .venv/bin/python bench/bench_export.py [--versions 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch

from schemas.model_spec import DEFAULT_SPEC, INPUT_NAME
from trainer.export import OnnxExporter
from trainer.model import build_model, trainable_state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--versions", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = build_model(DEFAULT_SPEC, args.hidden, seed=0)

    t = time.perf_counter()
    exporter = OnnxExporter(model, DEFAULT_SPEC)
    template_s = time.perf_counter() - t

    per_version, checked = [], []
    blob = b""
    for i in range(args.versions):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        state = trainable_state(model)
        t = time.perf_counter()
        blob = exporter.export(state)
        per_version.append(time.perf_counter() - t)
        if i % 20 == 0:
            t = time.perf_counter()
            onnx.checker.check_model(onnx.load_from_string(blob))
            sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
            checked.append(time.perf_counter() - t)

    rng = np.random.default_rng(0)
    w = np.zeros((256, DEFAULT_SPEC.history, 7), np.float32)
    w[:, :, 0] = np.linspace(-0.9, 0, DEFAULT_SPEC.history)
    w[:, :, 1:3] = rng.normal(0, 100, (256, DEFAULT_SPEC.history, 2))
    w[:, :, 3:] = rng.normal(0, 1, (256, DEFAULT_SPEC.history, 4))
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])  # newest version
    diff = np.abs(sess.run(None, {INPUT_NAME: w})[0] - model(torch.from_numpy(w)).detach().numpy())

    ms = sorted(x * 1e3 for x in per_version)
    print(
        f"model: MLP hidden={args.hidden}, {sum(p.numel() for p in model.parameters())} params, "
        f"ONNX {len(blob) / 1024:.0f} KiB"
    )
    print(f"template export (once, torch.onnx.export dynamo=False): {template_s * 1e3:.0f} ms")
    print(
        f"per-version export (patch initializers + serialise), {args.versions} versions: "
        f"p50 {statistics.median(ms):.3f} ms, p99 {ms[int(0.99 * (len(ms) - 1))]:.3f} ms, "
        f"max {ms[-1]:.3f} ms"
    )
    print(
        f"receiver check (onnx.checker + ORT session): median "
        f"{statistics.median(checked) * 1e3:.1f} ms"
    )
    print(f"max |onnx - torch| on 256 random windows (|x|,|y| ~ 100 m): {diff.max():.2e}")


if __name__ == "__main__":
    main()
