"""ONNX Runtime vs torch eager latency by batch size on the same small trajectory model.

The model is a stand-in of the trainer's: ego-frame transform, a GRU over the 10-frame
history and an MLP head ([B, 10, 7] -> [B, 4, 2]). ONNX Runtime goes through
inference.runtime exactly as serving does (CUDA EP + I/O binding when a GPU is usable,
else CPU EP with intra_op 1); torch eager runs on the same device (1 thread on CPU).

    python bench/bench_onnx.py [--device auto|cpu|cuda] [--iters 300] [--bootstrap unused]
"""

from __future__ import annotations

import argparse
import io
import json
import time
import warnings

import numpy as np
import torch
from torch import nn

from inference.runtime import LoadedModel, build_session, quiet_ort
from schemas.envelope import ModelEnvelope
from schemas.model_spec import DEFAULT_SPEC, INPUT_NAME, OUTPUT_NAME

BATCHES = (1, 8, 64, 256)


class TrajectoryNet(nn.Module):
    def __init__(self, hidden: int = 64, horizons: int = 4) -> None:
        super().__init__()
        self.gru = nn.GRU(7, hidden, batch_first=True)
        self.head = nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, horizons * 2)
        )
        self.horizons = horizons

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        last = history[:, -1:, :]
        rel = torch.cat(
            [history[..., :1], history[..., 1:3] - last[..., 1:3], history[..., 3:]], -1
        )
        _, h = self.gru(rel)
        delta = self.head(h[-1]).view(-1, self.horizons, 2)
        return last[..., 1:3] + delta


def export(model: nn.Module) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (torch.zeros(2, DEFAULT_SPEC.history, 7),),
            buf,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return buf.getvalue()


def percentiles(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples) * 1e3
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 4),
        "p99_ms": round(float(np.percentile(a, 99)), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--bootstrap", default=None, help="accepted for symmetry; unused")
    args = parser.parse_args()
    quiet_ort()
    torch.manual_seed(0)
    net = TrajectoryNet()
    onnx_bytes = export(net)
    session, provider = build_session(onnx_bytes, args.device, intra_op_threads=1)
    env = ModelEnvelope(
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
    model = LoadedModel(envelope=env, session=session, provider=provider)
    model.warm_up(BATCHES, rounds=10)
    cuda = provider == "CUDAExecutionProvider"
    dev = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_num_threads(1)
    net = net.to(dev).eval()
    gpu = torch.cuda.get_device_name(0) if cuda else "none"
    print(json.dumps({"provider": provider, "torch_device": str(dev), "gpu": gpu}))
    print(f"{'batch':>5} | {'ORT p50':>9} {'ORT p99':>9} | {'torch p50':>9} {'torch p99':>9}  (ms)")
    rng = np.random.default_rng(0)
    for b in BATCHES:
        x = rng.normal(size=(b, DEFAULT_SPEC.history, 7)).astype(np.float32)
        ort_t, torch_t = [], []
        for _ in range(args.iters):
            t0 = time.perf_counter()
            model.run(x)  # includes host->device copy and result back to host, as serving
            ort_t.append(time.perf_counter() - t0)
        with torch.inference_mode():
            for _ in range(10):
                net(torch.from_numpy(x).to(dev)).cpu()
            for _ in range(args.iters):
                t0 = time.perf_counter()
                net(torch.from_numpy(x).to(dev)).cpu().numpy()
                torch_t.append(time.perf_counter() - t0)
        o, t = percentiles(ort_t), percentiles(torch_t)
        row = f"{o['p50_ms']:>9.3f} {o['p99_ms']:>9.3f} | {t['p50_ms']:>9.3f} {t['p99_ms']:>9.3f}"
        print(f"{b:>5} | {row}")
        print(json.dumps({"batch": b, "ort": o, "torch_eager": t, "provider": provider}))


if __name__ == "__main__":
    main()
