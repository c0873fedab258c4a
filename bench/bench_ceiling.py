"""How far below physics can a model fitted on one log get? An upper bound, per log.

For every frame with its whole future in the log, the residual of the better physics
predictor (CV or CTRV over the whole log) at the longest horizon is regressed, in the
vehicle's frame, on what the model sees: speed and yaw rate over the last 2 s (relative to
the newest), speed, yaw rate and their product. Two fits, ridge regression:

- **in-sample ceiling**: fitted on every sample of the log and scored on the same samples
  (it has seen its own answers: no online learner can do better with these inputs);
- **online**: refitted every frame on the samples whose truth has arrived (what a
  test-then-train learner could do, with no lag for export).

Ground truth is the log's own positions, interpolated by the :mod:`schemas.window` rule.

    .venv/bin/python bench/bench_ceiling.py /tmp/ds/car.parquet /tmp/ds/bike.parquet
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas import window
from schemas.kinematics import predict_ctrv, predict_cv
from schemas.model_spec import DEFAULT_SPEC

LAGS = (5, 10, 15, 20)
"""Frames back (at 10 Hz: 0.5 to 2 s) whose speed and yaw rate are features."""
LAMBDAS = (1.0, 10.0, 100.0)
MIN_ONLINE = 20
"""The online fit waits for this many labelled samples; physics answers before."""


def features(cols: dict[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
    v, w = cols["speed"], cols["yaw_rate"]
    out = [np.ones(len(idx)), v[idx], w[idx], v[idx] * w[idx]]
    for lag in LAGS:
        j = np.maximum(idx - lag, 0)
        out += [v[j] - v[idx], w[j] - w[idx]]
    return np.stack(out, 1)


def ridge(x: np.ndarray, r: np.ndarray, lam: float) -> np.ndarray:
    return np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ r)


def one_log(path: str) -> dict[str, float]:
    table = pq.read_table(path, columns=["t_event_ns", "x", "y", "speed", "heading", "yaw_rate"])
    cols = {c: table.column(c).to_numpy() for c in table.column_names}
    t = cols["t_event_ns"]
    horizon = max(DEFAULT_SPEC.horizons_s)
    truth, ok = window.labels(t, cols["x"], cols["y"], t, (horizon,))
    idx = np.flatnonzero(ok)
    truth = truth[idx, 0]
    x0, y0, v0, h = (cols[c][idx] for c in ("x", "y", "speed", "heading"))
    cv = predict_cv(x0, y0, v0, h, (horizon,))[:, 0]
    ctrv = predict_ctrv(x0, y0, v0, h, cols["yaw_rate"][idx], (horizon,))[:, 0]
    errs = {n: np.linalg.norm(p - truth, axis=1) for n, p in (("cv", cv), ("ctrv", ctrv))}
    best = min(errs, key=lambda n: errs[n].mean())
    base = {"cv": cv, "ctrv": ctrv}[best]
    c, s = np.cos(h), np.sin(h)
    d = truth - base
    resid = np.stack([d[:, 0] * c + d[:, 1] * s, -d[:, 0] * s + d[:, 1] * c], 1)
    x = features(cols, idx)
    physics = float(errs[best].mean())
    ceiling = min(
        float(np.linalg.norm(resid - x @ ridge(x, resid, lam), axis=1).mean()) for lam in LAMBDAS
    )
    known_at = t[idx] + int(horizon * 1e9)
    online = errs[best].copy()
    for k in range(len(idx)):
        seen = known_at <= t[idx[k]]
        if seen.sum() >= MIN_ONLINE:
            coef = ridge(x[seen], resid[seen], LAMBDAS[-1])
            online[k] = np.linalg.norm(resid[k] - x[k] @ coef)
    return {
        "samples": len(idx),
        "seconds": (t[-1] - t[0]) / 1e9,
        "best_physics": best,
        "physics_m": physics,
        "ceiling_m": ceiling,
        "online_m": float(online.mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logs", nargs="+", help="canonical sensor logs (import-log output)")
    args = ap.parse_args()
    print("| log | seconds | samples | best physics FDE@3s | in-sample ceiling | online ridge |")
    print("|---|---|---|---|---|---|")
    for path in args.logs:
        r = one_log(path)
        ceil = 100 * (r["ceiling_m"] / r["physics_m"] - 1)
        onl = 100 * (r["online_m"] / r["physics_m"] - 1)
        print(
            f"| {Path(path).stem} | {r['seconds']:.0f} | {r['samples']} | "
            f"{r['best_physics']} {r['physics_m']:.2f} m | {r['ceiling_m']:.2f} m ({ceil:+.1f} %) "
            f"| {r['online_m']:.2f} m ({onl:+.1f} %) |"
        )


if __name__ == "__main__":
    main()
