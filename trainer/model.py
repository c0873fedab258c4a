"""The prediction model: raw history window in, absolute future positions out.

Feature engineering lives inside the module (decision 2), so the exported ONNX graph reads
exactly the schemas.model_spec input. The model is physics-informed: from the window it
estimates speed, acceleration (speed slope) and yaw rate (sensor, and heading slope) and
integrates candidate trajectories in-graph (CV, CA, CTRV, CTRA; a midpoint sum over a fixed
time grid, so nothing divides by a yaw rate). A small network over the ego-frame window
outputs softmax blend weights over the candidates plus a bounded ego-frame residual.
The network's last layers start at zero, so an untrained model *is* its physics prior
(:data:`PRIOR_WEIGHTS`), and learning starts from there: one vehicle's first minute only
has to move a few blend logits, not discover kinematics.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from schemas.errors import ConfigError
from schemas.model_spec import InputSpec
from trainer.checkpoint import write_atomic

# per-step ego features: dt, ex, ey, speed, cos(dh), sin(dh), yaw_rate, accel
_FEATURE_SCALE = (1.0, 1 / 10.0, 1 / 10.0, 1 / 20.0, 1.0, 1.0, 1 / 0.5, 1 / 3.0)
# window estimates: speed, accel fit, yaw (sensor), yaw (heading fit), ego vx, vy fit
_ESTIMATE_SCALE = (1 / 20.0, 1 / 3.0, 1 / 0.5, 1 / 0.5, 1 / 20.0, 1 / 5.0)
_CLAMP = 10.0
"""Bound on every scaled network input: wild inputs give finite, bounded outputs."""

#: Candidate trajectories, in order: (name, speed source, uses accel fit, yaw source).
#: "position" speed is the fitted ego velocity over the window (its size and direction):
#: it keeps working when a log's speed channel is off (units, scale) or its heading lags.
CANDIDATES: tuple[tuple[str, str, bool, str], ...] = (
    ("cv", "sensor", False, ""),
    ("ctrv", "sensor", False, "sensor"),
    ("ctrv_heading", "sensor", False, "heading"),
    ("ca", "sensor", True, ""),
    ("ctra", "sensor", True, "sensor"),
    ("ctra_heading", "sensor", True, "heading"),
    ("cv_position", "position", False, ""),
    ("ctrv_position", "position", False, "heading"),
)
#: Blend weights of the untrained model (the physics prior), one per candidate. CTRV-leaning:
#: the yaw sensor wins on most real drives, and the CV share hedges a noisy one.
PRIOR_WEIGHTS = (0.2, 0.6, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0)
_MIN_WEIGHT = 1e-3
"""Prior weights are floored so every candidate's logit stays finite and learnable."""

GRID_STEP_S = 0.05
"""Integration step of the in-graph trajectory sum."""
ACCEL_BOUND = (-6.0, 4.0)
"""Fitted acceleration is clipped to this (m/s^2): a fit over noisy speeds can be wild."""
MAX_SPEED = 80.0
"""Speeds (sensor and fitted) are clipped to this (m/s)."""
YAW_BOUND = 1.5
"""Estimated yaw rates are clipped to +-this (rad/s)."""
RESIDUAL_MPS = 3.0
"""The residual is bounded by this times the horizon (metres)."""
SENSOR_YAW_FRAMES = 3
"""The sensor yaw rate is the mean of the newest this many frames."""


def _slope(t: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Least-squares slope of q over t per row; 0 where the times do not spread."""
    tc = t - t.mean(1, keepdim=True)
    qc = q - q.mean(1, keepdim=True)
    var = (tc * tc).sum(1)
    return (tc * qc).sum(1) / torch.clamp(var, min=1e-3) * (var > 1e-3).to(q.dtype)


def _integration_matrix(horizons: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Midpoint times [S] and weights [K, S]: position at h_k = sum_s M[k, s] * v(t_s)."""
    steps = math.ceil(max(horizons) / GRID_STEP_S - 1e-9)
    start = np.arange(steps) * GRID_STEP_S
    frac = np.clip((np.asarray(horizons)[:, None] - start[None, :]) / GRID_STEP_S, 0.0, 1.0)
    mid = start + 0.5 * GRID_STEP_S
    return torch.tensor(mid, dtype=torch.float32), torch.tensor(
        frac * GRID_STEP_S, dtype=torch.float32
    )


class TrajectoryModel(nn.Module):
    """Blend of in-graph physics candidates plus a bounded residual, per horizon."""

    horizons: torch.Tensor
    feature_scale: torch.Tensor
    estimate_scale: torch.Tensor
    grid_t: torch.Tensor
    grid_w: torch.Tensor
    use_accel: torch.Tensor
    use_position: torch.Tensor
    yaw_select: torch.Tensor

    def __init__(self, spec: InputSpec, hidden: int = 64) -> None:
        super().__init__()
        self.spec = spec
        n_h, n_c = len(spec.horizons_s), len(CANDIDATES)
        self.register_buffer("horizons", torch.tensor(spec.horizons_s, dtype=torch.float32))
        self.register_buffer("feature_scale", torch.tensor(_FEATURE_SCALE, dtype=torch.float32))
        self.register_buffer("estimate_scale", torch.tensor(_ESTIMATE_SCALE, dtype=torch.float32))
        grid_t, grid_w = _integration_matrix(spec.horizons_s)
        self.register_buffer("grid_t", grid_t)
        self.register_buffer("grid_w", grid_w)
        self.register_buffer(
            "use_accel", torch.tensor([float(a) for _, _, a, _ in CANDIDATES], dtype=torch.float32)
        )
        self.register_buffer(
            "use_position",
            torch.tensor(
                [float(v == "position") for _, v, _, _ in CANDIDATES], dtype=torch.float32
            ),
        )
        # yaw per candidate = [0, sensor, heading] @ yaw_select[:, c]
        select = torch.zeros(3, n_c)
        for c, (_, _, _, yaw) in enumerate(CANDIDATES):
            select[{"": 0, "sensor": 1, "heading": 2}[yaw], c] = 1.0
        self.register_buffer("yaw_select", select)

        n_in = spec.history * len(_FEATURE_SCALE) + len(_ESTIMATE_SCALE)
        self.trunk = nn.Sequential(
            nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.blend_head = nn.Linear(hidden, n_c)
        prior = torch.tensor([max(w, _MIN_WEIGHT) for w in PRIOR_WEIGHTS])
        self.blend_bias = nn.Parameter(torch.log(prior / prior.sum()))
        self.residual_head = nn.Linear(hidden, n_h * 2)
        self.residual_linear = nn.Linear(n_in, n_h * 2)
        """A linear path (e.g. smoothing of the noisy newest position) beside the MLP."""
        for head in (self.blend_head, self.residual_head, self.residual_linear):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def _inputs(
        self, history: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Network input, the kinematic estimates [B, 6] (v, a, w_sensor, w_heading, ego
        velocity fit x, y) and the newest frame's x0, y0, heading."""
        last = history[:, -1, :]
        x0, y0, h0 = last[:, 1:2], last[:, 2:3], last[:, 4:5]
        c, s = torch.cos(h0), torch.sin(h0)
        rx, ry = history[:, :, 1] - x0, history[:, :, 2] - y0
        ex, ey = c * rx + s * ry, c * ry - s * rx
        dh = history[:, :, 4] - h0
        dh = torch.atan2(torch.sin(dh), torch.cos(dh))  # unwrapped around the newest heading
        t = history[:, :, 0]
        v = torch.clamp(last[:, 3], 0.0, MAX_SPEED)
        a = torch.clamp(_slope(t, history[:, :, 3]), ACCEL_BOUND[0], ACCEL_BOUND[1])
        w_s = history[:, -SENSOR_YAW_FRAMES:, 5].mean(1).clamp(-YAW_BOUND, YAW_BOUND)
        w_h = _slope(t, dh).clamp(-YAW_BOUND, YAW_BOUND)
        feats = torch.stack(
            [t, ex, ey, history[:, :, 3], torch.cos(dh), torch.sin(dh), history[:, :, 5],
             history[:, :, 6]],
            dim=-1,
        )  # fmt: skip
        vpx = _slope(t, ex).clamp(-MAX_SPEED, MAX_SPEED)
        vpy = _slope(t, ey).clamp(-MAX_SPEED, MAX_SPEED)
        est = torch.stack([v, a, w_s, w_h, vpx, vpy], dim=-1)
        z = torch.cat([(feats * self.feature_scale).flatten(1), est * self.estimate_scale], 1)
        z = torch.clamp(z, -_CLAMP, _CLAMP)
        return z, est, x0, y0, h0

    def _candidates_ego(self, est: torch.Tensor) -> torch.Tensor:
        """[B, C, K, 2] ego-frame candidate trajectories from the estimates."""
        v_s = est[:, 0:1]
        vpx, vpy = est[:, 4:5], est[:, 5:6]
        v_p = torch.sqrt(vpx * vpx + vpy * vpy + 1e-6)
        # direction of the fitted velocity relative to the heading (0 when nearly standing)
        phi_p = torch.atan2(vpy, vpx + 1e-3) * (v_p > 0.5).to(v_p.dtype)
        pos = self.use_position
        v = v_s * (1.0 - pos) + v_p * pos  # [B, C]
        phi = phi_p * pos
        yaws = torch.stack([torch.zeros_like(est[:, 2]), est[:, 2], est[:, 3]], dim=-1)
        w = yaws @ self.yaw_select  # [B, C]
        acc = est[:, 1:2] * self.use_accel  # [B, C]
        t = self.grid_t[None, None, :]
        speed = torch.relu(v[:, :, None] + acc[:, :, None] * t)  # braking stops, never reverses
        theta = phi[:, :, None] + w[:, :, None] * t
        ex = (speed * torch.cos(theta)) @ self.grid_w.t()  # [B, C, K]
        ey = (speed * torch.sin(theta)) @ self.grid_w.t()
        return torch.stack([ex, ey], dim=-1)

    @staticmethod
    def _to_world(
        e: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, h0: torch.Tensor
    ) -> torch.Tensor:
        c, s = torch.cos(h0), torch.sin(h0)
        ex, ey = e[..., 0], e[..., 1]
        return torch.stack([x0 + c * ex - s * ey, y0 + s * ex + c * ey], dim=-1)

    def candidates(self, history: torch.Tensor) -> torch.Tensor:
        """[B, C, K, 2] absolute positions of every physics candidate (for diagnostics)."""
        _, est, x0, y0, h0 = self._inputs(history)
        e = self._candidates_ego(est)
        return self._to_world(e, x0[:, :, None], y0[:, :, None], h0[:, :, None])

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        z, est, x0, y0, h0 = self._inputs(history)
        hid = self.trunk(z)
        weights = torch.softmax(self.blend_head(hid) + self.blend_bias, dim=-1)  # [B, C]
        blend = (weights[:, :, None, None] * self._candidates_ego(est)).sum(1)  # [B, K, 2]
        r = (self.residual_head(hid) + self.residual_linear(z)).reshape(-1, len(self.horizons), 2)
        bound = RESIDUAL_MPS * self.horizons[None, :, None]
        return self._to_world(blend + bound * torch.tanh(r / bound), x0, y0, h0)

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(blend parameters, residual parameters): they learn at different rates."""
        blend = [self.blend_bias, *self.blend_head.parameters()]
        ids = {id(p) for p in blend}
        return blend, [p for p in self.parameters() if id(p) not in ids]


def build_model(spec: InputSpec, hidden: int, seed: int) -> TrajectoryModel:
    """Deterministic init: the server and every rank build the same version-0 weights."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return TrajectoryModel(spec, hidden)
    finally:
        torch.random.set_rng_state(gen_state)


def build_optimizer(
    model: TrajectoryModel, lr: float, residual_lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """AdamW: the blend at ``lr`` with no decay; the residual network slower and decayed
    towards zero (towards pure physics), which is what keeps one vehicle from overfitting."""
    blend, residual = model.param_groups()
    return torch.optim.AdamW(
        [
            {"params": blend, "lr": lr, "weight_decay": 0.0},
            {"params": residual, "lr": residual_lr, "weight_decay": weight_decay},
        ]
    )


def trainable_state(model: nn.Module) -> dict[str, np.ndarray]:
    """Parameters (not buffers) as float32 numpy copies, in a stable order."""
    return {
        k: v.detach().cpu().numpy().astype(np.float32, copy=True)
        for k, v in model.named_parameters()
    }


def load_trainable(model: nn.Module, state: dict[str, np.ndarray]) -> None:
    """Copy ``state`` into the parameters in place (keeps optimiser references valid)."""
    params = dict(model.named_parameters())
    if set(params) != set(state):
        raise ValueError(f"weights do not match the model: {sorted(set(params) ^ set(state))}")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(torch.from_numpy(state[k]).to(p.device))


def displacement_loss(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, huber_m: float = 1.0
) -> torch.Tensor:
    """Sum over samples of weight x mean Huber(displacement error) over horizons.

    Quadratic below ``huber_m`` metres, linear (the displacement itself) above: GNSS
    outliers in the labels pull no harder than any large error.
    """
    d = torch.sqrt(((pred - target) ** 2).sum(-1) + 1e-6)
    err = torch.where(d < huber_m, 0.5 * d * d / huber_m, d - 0.5 * huber_m).mean(-1)
    return (err * weight).sum()


def save_prior(path: str | Path, model: nn.Module) -> None:
    """Write the trainable weights (a warm start for ``--init-from``) atomically."""
    buf = io.BytesIO()
    torch.save({k: torch.from_numpy(v) for k, v in trainable_state(model).items()}, buf)
    write_atomic(path, buf.getvalue())


def load_prior(path: str | Path, model: nn.Module) -> None:
    """Load ``--init-from`` weights into ``model``; ConfigError if they do not fit it."""
    try:
        raw = torch.load(Path(path), weights_only=True)
        load_trainable(model, {k: v.numpy() for k, v in raw.items()})
    except (OSError, RuntimeError, ValueError, AttributeError, KeyError) as exc:
        raise ConfigError(
            f"--init-from {path}: not weights of this model ({exc}); re-run "
            "`drivestream pretrain` with the same --hidden"
        ) from exc
