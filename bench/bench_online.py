"""Online learning on one log, test-then-train in sensor time, against physics.

Replays a canonical sensor log through the trainer's own offline driver
(trainer.pretrain.replay_log: the production TrainLoop at world size 1, gloo, no parameter
server, stepping at --steps-per-s of log time). Each sample is scored before it is trained
on by the live model and by a snapshot lagging by --export-period-s (what serving would
run), and by CV, CTRV and CA from the newest frame. "gated" mimics the serving gate: per
sample the lagged model if its FDE@max over the samples labelled in the previous
--window-s beat the better of CV/CTRV on the same samples, else that better physics.

Ground truth is the log itself (labels interpolated from the logged, noisy positions, as
the trainer learns them and the report scores real drives), also for simulated logs.

    .venv/bin/python bench/bench_online.py --sim-vehicles 1 --sim-duration-s 300
    .venv/bin/python bench/bench_online.py --sim-vehicles 16 --sim-duration-s 180
    .venv/bin/python bench/bench_online.py --log /tmp/ds/car.parquet --json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas.kinematics import predict_ca, predict_ctrv, predict_cv
from schemas.model_spec import DEFAULT_SPEC
from schemas.sensor import table_to_frames
from trainer.config import TrainConfig
from trainer.pretrain import local_group, replay_log

NS = 1_000_000_000
PREDICTORS = ("model", "lagged", "gated", "cv", "ctrv", "ca")
TUNABLE = (
    "steps_per_s", "batch_size", "fresh_fraction", "max_reuse", "lr", "residual_lr",
    "residual_warmup_samples",
    "weight_decay", "huber_m", "hidden", "seed", "init_from", "replay_capacity",
)  # fmt: skip


def load_frames(args: argparse.Namespace) -> tuple[list, str]:
    if args.log:
        return table_to_frames(pq.read_table(args.log)), Path(args.log).name
    from ingest.simulator import SimConfig, simulate

    sim = SimConfig(vehicles=args.sim_vehicles, duration_s=args.sim_duration_s, seed=args.sim_seed)
    log, _truth = simulate(sim)
    name = f"sim {args.sim_vehicles}x{args.sim_duration_s:g}s seed {args.sim_seed}"
    return table_to_frames(log), name


class Recorder:
    """Per-sample errors of every predictor, in emission (label) order."""

    def __init__(self, export_period_s: float) -> None:
        self.period_ns = round(export_period_s * NS)
        self.snapshot: torch.nn.Module | None = None
        self._snap_ns = -(1 << 62)
        self.anchor_ns: list[np.ndarray] = []
        self.label_ns: list[np.ndarray] = []
        self.err: dict[str, list[np.ndarray]] = {p: [] for p in PREDICTORS if p != "gated"}
        self.cand: list[np.ndarray] = []

    def on_step(self, loop, t_ns: int) -> None:  # type: ignore[no-untyped-def]
        if t_ns - self._snap_ns >= self.period_ns:
            self.snapshot = copy.deepcopy(loop.model).eval()
            self._snap_ns = t_ns

    def on_scored(self, samples: list, pred: np.ndarray) -> None:
        w = np.stack([s.window for s in samples]).astype(np.float32)
        y = np.stack([s.target for s in samples]).astype(np.float64)
        last = w[:, -1, :].astype(np.float64)
        x0, y0, v, h, yaw, acc = (last[:, i] for i in (1, 2, 3, 4, 5, 6))
        hs = DEFAULT_SPEC.horizons_s
        assert self.snapshot is not None
        with torch.no_grad():
            lag = self.snapshot(torch.from_numpy(w)).numpy()
            has = hasattr(self.snapshot, "candidates")  # models before the physics blend: none
            cand = self.snapshot.candidates(torch.from_numpy(w)).numpy() if has else y[:, None]
        preds = {
            "model": pred,
            "lagged": lag,
            "cv": predict_cv(x0, y0, v, h, hs),
            "ctrv": predict_ctrv(x0, y0, v, h, yaw, hs),
            "ca": predict_ca(x0, y0, v, h, acc, hs),
        }
        for k, p in preds.items():
            self.err[k].append(np.linalg.norm(p - y, axis=-1))
        self.cand.append(np.linalg.norm(cand - y[:, None], axis=-1)[:, :, -1])
        self.anchor_ns.append(np.array([s.t_anchor_ns for s in samples]))
        self.label_ns.append(np.array([s.t_label_ns for s in samples]))

    def arrays(self, window_s: float) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        anchor = np.concatenate(self.anchor_ns)
        label = np.concatenate(self.label_ns)
        err = {k: np.concatenate(v) for k, v in self.err.items()}
        err["gated"] = gate(label, err, round(window_s * NS))
        return anchor, err, np.concatenate(self.cand)


def gate(label_ns: np.ndarray, err: dict[str, np.ndarray], window_ns: int) -> np.ndarray:
    """Per sample: lagged model if it beat the better physics over the previous window."""
    fde = {k: err[k][:, -1] for k in ("lagged", "cv", "ctrv")}
    cums = {k: np.concatenate([[0.0], np.cumsum(v)]) for k, v in fde.items()}
    out = np.empty_like(err["cv"])
    for i in range(len(label_ns)):
        lo = int(np.searchsorted(label_ns, label_ns[i] - window_ns, side="left"))
        hi = int(np.searchsorted(label_ns, label_ns[i], side="left"))  # labelled before this
        if hi <= lo:
            out[i] = err["ctrv"][i]
            continue
        mean = {k: (c[hi] - c[lo]) for k, c in cums.items()}
        best = "cv" if mean["cv"] < mean["ctrv"] else "ctrv"
        out[i] = err["lagged"][i] if mean["lagged"] < mean[best] else err[best][i]
    return out


def summarise(anchor: np.ndarray, err: dict[str, np.ndarray], window_s: float) -> dict:
    t = (anchor - anchor.min()) / NS
    rows = []
    for lo in np.arange(0.0, t.max() + 1e-9, window_s):
        m = (t >= lo) & (t < lo + window_s)
        if m.sum():
            rows.append({"from_s": float(lo), "n": int(m.sum()),
                         **{k: float(e[m, -1].mean()) for k, e in err.items()}})  # fmt: skip
    last = t >= t.max() - window_s

    def block(mask: np.ndarray) -> dict:
        return {k: [float(x) for x in e[mask].mean(0)] for k, e in err.items()} | {
            "n": int(mask.sum())
        }

    return {"windows": rows, "last": block(last), "whole": block(np.ones_like(last))}


def print_table(name: str, cfg: TrainConfig, res: dict, cands: dict, wall_s: float) -> None:
    hs = "/".join(f"{h:g}" for h in DEFAULT_SPEC.horizons_s)
    print(f"# {name}: FDE@{DEFAULT_SPEC.max_horizon_s:g}s (m) per window of anchor time")
    print(f"{'from_s':>6} {'n':>5} " + " ".join(f"{p:>7}" for p in PREDICTORS))
    for r in res["windows"]:
        print(f"{r['from_s']:6.0f} {r['n']:5d} " + " ".join(f"{r[p]:7.2f}" for p in PREDICTORS))
    for key in ("last", "whole"):
        b = res[key]
        print(f"# {key} (n={b['n']}): error at {hs} s")
        for p in PREDICTORS:
            print(f"  {p:>7}: " + " / ".join(f"{x:.2f}" for x in b[p]))
    w = res["whole"]
    best = min(w["cv"][-1], w["ctrv"][-1])
    last_best = min(res["last"]["cv"][-1], res["last"]["ctrv"][-1])
    print(
        f"# lagged vs best(CV,CTRV) at {DEFAULT_SPEC.max_horizon_s:g}s: whole "
        f"{100 * (w['lagged'][-1] / best - 1):+.1f} %, last window "
        f"{100 * (res['last']['lagged'][-1] / last_best - 1):+.1f} %; model vs CV whole "
        f"{100 * (w['model'][-1] / w['cv'][-1] - 1):+.1f} %"
    )
    print("# physics candidates in the graph, whole-log FDE: "
          + ", ".join(f"{k} {v:.2f}" for k, v in cands.items()))  # fmt: skip
    print(f"# {wall_s:.0f} s wall; config: " + ", ".join(f"{k}={getattr(cfg, k)}" for k in TUNABLE
          if hasattr(cfg, k)))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", help="canonical sensor log (Parquet); else simulate")
    parser.add_argument("--sim-vehicles", type=int, default=1)
    parser.add_argument("--sim-duration-s", type=float, default=300.0)
    parser.add_argument("--sim-seed", type=int, default=0)
    parser.add_argument("--export-period-s", type=float, default=10.0)
    parser.add_argument("--window-s", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for k in TUNABLE:
        if k in fields:
            kind = type(fields[k].default)
            parser.add_argument("--" + k.replace("_", "-"), type=kind, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    over = {k: getattr(args, k) for k in TUNABLE if k in fields and getattr(args, k) is not None}
    cfg = TrainConfig(holdout_fraction=0.0, **over)
    frames, name = load_frames(args)
    rec = Recorder(args.export_period_s)
    started = time.monotonic()
    with local_group():
        loop = replay_log(cfg, frames, on_scored=rec.on_scored, on_step=rec.on_step)
    wall = time.monotonic() - started
    anchor, err, cand = rec.arrays(args.window_s)
    res = summarise(anchor, err, args.window_s)
    names = [c[0] for c in getattr(sys.modules[type(loop.model).__module__], "CANDIDATES", [])]
    cands = {n: float(cand[:, i].mean()) for i, n in enumerate(names)}
    res |= {"log": name, "candidates": cands, "steps": loop.counters.steps,
            "empty_steps": loop.counters.empty_steps, "wall_s": wall}  # fmt: skip
    if args.json:
        print(json.dumps(res))
    else:
        print_table(name, cfg, res, cands, wall)
        print(f"# steps {loop.counters.steps}, empty {loop.counters.empty_steps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
