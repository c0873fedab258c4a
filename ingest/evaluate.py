"""Physics baselines scored on a sensor log against its ground truth (ADE/FDE).

Calibrates the simulator (constant-velocity error should look like real drives) and sets
the bar a learned model must clear. The predictors are the shared ``schemas.kinematics``
ones (the inference fallback and the report use the same); truth is the
:mod:`schemas.window` label rule (interpolated in time, never across a gap).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from schemas import window
from schemas.kinematics import predict_ctrv, predict_cv
from schemas.model_spec import DEFAULT_SPEC


@dataclass(frozen=True, kw_only=True)
class BaselineErrors:
    """Mean displacement error (m) of one baseline, per horizon and overall."""

    model: str
    horizons_s: tuple[float, ...]
    mean_error_m: tuple[float, ...]
    """Mean error at each horizon."""
    ade_m: float
    """Mean error over a 0.1 s grid up to the longest horizon."""
    fde_m: float
    """Mean error at the longest horizon."""
    frames: int
    fde_by_manoeuvre: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        per = ", ".join(
            f"{h:g}s {e:.2f}m" for h, e in zip(self.horizons_s, self.mean_error_m, strict=True)
        )
        return (
            f"{self.model}: ADE {self.ade_m:.2f} m, FDE {self.fde_m:.2f} m ({per}; n={self.frames})"
        )


def _predict(model: str, f: dict[str, np.ndarray], tau: np.ndarray) -> tuple[np.ndarray, ...]:
    """Positions [frames, len(tau)] predicted from each frame by ``cv`` or ``ctrv``."""
    if model == "cv":
        out = predict_cv(f["x"], f["y"], f["speed"], f["heading"], tau.tolist())
    else:
        out = predict_ctrv(f["x"], f["y"], f["speed"], f["heading"], f["yaw_rate"], tau.tolist())
    return out[..., 0], out[..., 1]


def baseline_errors(
    log: pa.Table,
    truth: pa.Table,
    model: str = "cv",
    horizons_s: tuple[float, ...] = DEFAULT_SPEC.horizons_s,
) -> BaselineErrors:
    """Score ``cv`` or ``ctrv`` predictions from every log frame whose horizons are in truth."""
    if model not in ("cv", "ctrv"):
        raise ValueError(f"model must be 'cv' or 'ctrv', got {model!r}")
    h_max = max(horizons_s)
    grid = np.round(np.arange(1, round(h_max * 10) + 1) / 10, 6)
    taus = np.unique(np.concatenate([grid, np.asarray(horizons_s)]))
    errs: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    log_vid = np.asarray(log.column("vehicle_id").to_pylist(), dtype=object)
    tr_vid = np.asarray(truth.column("vehicle_id").to_pylist(), dtype=object)
    cols = {k: log.column(k).to_numpy() for k in ("x", "y", "speed", "heading", "yaw_rate")}
    log_t = log.column("t_event_ns").to_numpy()
    tr = {k: truth.column(k).to_numpy() for k in ("t_event_ns", "x", "y")}
    has_label = "manoeuvre" in truth.column_names
    tr_lab = np.asarray(truth.column("manoeuvre").to_pylist() if has_label else [], dtype=object)
    for vid in np.unique(log_vid):
        lsel, tsel = np.flatnonzero(log_vid == vid), np.flatnonzero(tr_vid == vid)
        if len(tsel) < 2:
            continue
        f = {k: a[lsel] for k, a in cols.items()}
        t = log_t[lsel]
        order = np.argsort(tr["t_event_ns"][tsel], kind="stable")
        tsel = tsel[order]
        tt, tx, ty = tr["t_event_ns"][tsel], tr["x"][tsel], tr["y"][tsel]
        gt, ok = window.labels(tt, tx, ty, t, taus.tolist())
        if not ok.any():
            continue
        f = {k: a[ok] for k, a in f.items()}
        px, py = _predict(model, f, taus)
        errs.append(np.hypot(px - gt[ok][..., 0], py - gt[ok][..., 1]))
        if has_label:
            idx = np.clip(np.searchsorted(tt, t[ok]), 0, len(tt) - 1)
            labels.append(tr_lab[tsel][idx])
    if not errs:
        raise ValueError("no log frame has truth covering its longest horizon")
    e = np.concatenate(errs)
    col = {round(float(tau), 6): i for i, tau in enumerate(taus)}
    at = tuple(float(e[:, col[round(h, 6)]].mean()) for h in horizons_s)
    grid_cols = [col[round(float(g), 6)] for g in grid]
    by: dict[str, float] = {}
    if labels:
        lab = np.concatenate(labels)
        last = e[:, col[round(h_max, 6)]]
        by = {str(m): float(last[lab == m].mean()) for m in np.unique(lab)}
    return BaselineErrors(
        model=model,
        horizons_s=tuple(horizons_s),
        mean_error_m=at,
        ade_m=float(e[:, grid_cols].mean()),
        fde_m=at[-1],
        frames=len(e),
        fde_by_manoeuvre=by,
    )
