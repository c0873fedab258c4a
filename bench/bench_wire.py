"""Prediction layouts: encode + decode cost per record and value size, binary vs JSON.

    .venv/bin/python bench/bench_wire.py [--records 20000] [--repeat 7]

No broker needed. Encoding uses the serving path (cached per-batch parts, as
``inference.output`` does); decoding includes the schema-header check a consumer makes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from schemas.prediction import (
    Prediction,
    PredictionEncoder,
    ValueEncoder,
    check_prediction_headers,
    decode_prediction,
    prediction_headers,
)
from schemas.prediction_json import JsonPredictionEncoder

H = (0.5, 1.0, 2.0, 3.0)


def make(n: int) -> list[Prediction]:
    """Predictions as serving makes them: float32 model outputs widened to float64."""
    rng = np.random.default_rng(0)
    xs = rng.uniform(-500, 500, (n, len(H))).astype(np.float32).tolist()
    ys = rng.uniform(-500, 500, (n, len(H))).astype(np.float32).tolist()
    t = 1_767_225_600_000_000_000
    return [
        Prediction(
            f"car-{i % 100}",
            i,
            t + i,
            H,
            tuple(xs[i]),
            tuple(ys[i]),
            7,
            "drivestream",
            "model",
            "",
            t + i + 1,
            t + i + 2,
            t + i + 3,
            t + i + 4,
            t + i + 5,
        )
        for i in range(n)
    ]


def encoder(fmt: str) -> Callable[[list[Prediction]], list[bytes]]:
    """Serve's path: one encoder per layout, the per-batch ``middle`` cached."""
    enc: ValueEncoder = PredictionEncoder() if fmt == "binary" else JsonPredictionEncoder()
    mid = enc.middle("drivestream", "model", "")
    return lambda ps: [
        enc.encode(
            p.vehicle_id,
            p.seq,
            p.t_event_ns,
            7,
            mid,
            (
                p.t_produce_ns,
                p.t_consumed_ns,
                p.t_infer_start_ns,
                p.t_infer_end_ns,
                p.t_published_ns,
            ),
            H,
            p.pred_x,
            p.pred_y,
        )
        for p in ps
    ]


def decoder(fmt: str) -> Callable[[list[bytes]], list[Prediction]]:
    hdrs = prediction_headers(fmt)  # type: ignore[arg-type]
    return lambda values: [decode_prediction(v, check_prediction_headers(hdrs)) for v in values]


def seconds(fn: Callable[[list], object], arg: list) -> float:  # type: ignore[type-arg]
    t0 = time.perf_counter()
    fn(arg)
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    preds = make(args.records)
    n = len(preds)
    formats = ("binary", "json")
    codecs = {f: (encoder(f), decoder(f)) for f in formats}
    values = {f: enc(preds) for f, (enc, _) in codecs.items()}
    for f, (_, dec) in codecs.items():
        assert dec(values[f]) == preds, f"{f} does not round-trip"
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeat):  # interleaved, so a noisy neighbour hits both layouts
        for f, (enc, dec) in codecs.items():
            times.setdefault((f, "encode"), []).append(seconds(enc, preds))
            times.setdefault((f, "decode"), []).append(seconds(dec, values[f]))
    print(f"prediction layouts, {n} records (4 horizons), median of {args.repeat}, us/record")
    print(f"  {'layout':<8} {'bytes':>6} {'encode':>8} {'decode':>8} {'total':>8}")
    for f in formats:
        e, d = (statistics.median(times[(f, op)]) / n * 1e6 for op in ("encode", "decode"))
        size = statistics.median(len(v) for v in values[f])
        print(f"  {f:<8} {size:6.0f} {e:8.2f} {d:8.2f} {e + d:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
