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


def _wrap(angle: torch.Tensor) -> torch.Tensor:
    """``angle`` in [-pi, pi] by a round: four ONNX nodes, where atan2 takes ten."""
    return angle - (2 * math.pi) * torch.round(angle / (2 * math.pi))


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
    candidate_select: torch.Tensor
    fit_low: torch.Tensor
    fit_high: torch.Tensor
    quarter_turn: torch.Tensor

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
        # use_accel, use_position and yaw_select (yaw per candidate = [0, sensor, heading] @
        # yaw_select[:, c]) are kept, and saved in trainer checkpoints, for those to load;
        # candidate_select is built from them
        select = torch.zeros(3, n_c)
        for c, (_, _, _, yaw) in enumerate(CANDIDATES):
            select[{"": 0, "sensor": 1, "heading": 2}[yaw], c] = 1.0
        self.register_buffer("yaw_select", select)
        # the estimates [v_sensor, a, w_sensor, w_heading, v_position, phi_position] ->
        # each candidate's (speed, accel, yaw rate, direction): one product, not a node a term
        pick = torch.zeros(6, 4, n_c)
        pick[0, 0], pick[4, 0] = 1.0 - self.use_position, self.use_position
        pick[1, 1] = self.use_accel
        pick[2, 2], pick[3, 2] = select[1], select[2]
        pick[5, 3] = self.use_position
        self.register_buffer("candidate_select", pick.reshape(6, 4 * n_c), persistent=False)
        # bounds of the fitted accel, heading yaw rate and ego velocity (x, y)
        low = (ACCEL_BOUND[0], -YAW_BOUND, -MAX_SPEED, -MAX_SPEED)
        high = (ACCEL_BOUND[1], YAW_BOUND, MAX_SPEED, MAX_SPEED)
        self.register_buffer("fit_low", torch.tensor(low), persistent=False)
        self.register_buffer("fit_high", torch.tensor(high), persistent=False)
        # (x, y) -> (-y, x) is a flip, then this
        self.register_buffer("quarter_turn", torch.tensor([-1.0, 1.0]), persistent=False)

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

    def _inputs(self, history: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Network input, the kinematic estimates ``[B, 6]`` (v, a, w_sensor, w_heading, ego
        velocity fit x, y), the newest frame's position ``[B, 2]``, and the cosine and sine
        of its heading ``[B, 1]``.

        Written for a small graph, since ONNX Runtime's cost for a lone window is mostly per
        node: one split of the columns, four slopes sharing their time terms, no atan2 to
        unwrap; and every series a row ``[B, T]``, where broadcasts run fastest.
        """
        cols = history.split(1, dim=-1)  # [B, T, 1] each
        t, x, y, speed, heading = (col.squeeze(-1) for col in cols[:5])  # [B, T] each
        x0, y0, h0 = x[:, -1:], y[:, -1:], heading[:, -1:]  # [B, 1]
        c, s = torch.cos(h0), torch.sin(h0)
        rx, ry = x - x0, y - y0
        ex, ey = c * rx + s * ry, c * ry - s * rx  # _rotate by -heading, on rows
        dh = _wrap(heading - h0)  # unwrapped around the newest heading
        # least-squares slopes over t of speed, heading and ego position (sum tc * q equals
        # sum tc * (q - mean q)): accel, heading yaw rate, ego velocity x and y
        tc = t - t.mean(1, keepdim=True)
        var = (tc * tc).sum(1, keepdim=True)
        fits = torch.cat([(tc * q).sum(1, keepdim=True) for q in (speed, dh, ex, ey)], dim=1)
        fits = fits / torch.clamp(var, min=1e-3) * (var > 1e-3).to(fits.dtype)  # 0: no spread
        fits = torch.minimum(torch.maximum(fits, self.fit_low), self.fit_high)
        v = torch.clamp(speed[:, -1:], 0.0, MAX_SPEED)
        w_s = cols[5][:, -SENSOR_YAW_FRAMES:].mean(1).clamp(-YAW_BOUND, YAW_BOUND)
        est = torch.cat([v, fits[:, :1], w_s, fits[:, 1:]], dim=1)
        made = [q.unsqueeze(-1) for q in (ex, ey, torch.cos(dh), torch.sin(dh))]
        feats = torch.cat([cols[0], *made[:2], cols[3], *made[2:], *cols[5:]], dim=-1)
        z = torch.cat([(feats * self.feature_scale).flatten(1), est * self.estimate_scale], 1)
        return torch.clamp(z, -_CLAMP, _CLAMP), est, torch.cat([x0, y0], dim=1), c, s

    def _rotate(self, v: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Vectors ``[..., 2]`` turned by the angle of cosine ``c`` and sine ``s``,
        elementwise: a batched 2x2 matmul costs more than it saves."""
        return c * v + s * (v.flip(-1) * self.quarter_turn)

    def _to_world(
        self, e: torch.Tensor, xy0: torch.Tensor, c: torch.Tensor, s: torch.Tensor
    ) -> torch.Tensor:
        """Ego-frame positions ``[B, ..., 2]`` in the world, from the newest frame's position
        ``xy0`` and heading cosine and sine (as :meth:`_inputs` returns them)."""
        lead = (-1,) + (1,) * (e.dim() - 2)
        return self._rotate(e, c.reshape(*lead, 1), s.reshape(*lead, 1)) + xy0.reshape(*lead, 2)

    def _ego_positions(self, est: torch.Tensor) -> torch.Tensor:
        """``[B, C, 2K]``: every candidate's ego-frame x at the horizons, then its y."""
        n_c = len(CANDIDATES)
        vp = est[:, 4:6]
        v_p = torch.sqrt((vp * vp).sum(1, keepdim=True) + 1e-6)
        # direction of the fitted velocity relative to the heading (0 when nearly standing)
        phi_p = torch.atan2(est[:, 5:6], est[:, 4:5] + 1e-3) * (v_p > 0.5).to(v_p.dtype)
        # each candidate's speed, acceleration, yaw rate and direction, in one product
        params = torch.cat([est[:, :4], v_p, phi_p], dim=1) @ self.candidate_select
        v, acc, w, phi = params.reshape(-1, 4 * n_c, 1).split(n_c, dim=1)  # [B, C, 1] each
        t, to_horizons = self.grid_t, self.grid_w.t()
        speed = torch.relu(v + acc * t)  # braking stops, never reverses
        theta = phi + w * t
        ex = (speed * torch.cos(theta)) @ to_horizons  # midpoint sums over the time grid
        ey = (speed * torch.sin(theta)) @ to_horizons
        return torch.cat([ex, ey], dim=-1)

    def candidates(self, history: torch.Tensor) -> torch.Tensor:
        """[B, C, K, 2] absolute positions of every physics candidate (for diagnostics)."""
        _, est, xy0, c, s = self._inputs(history)
        e = self._ego_positions(est).reshape(-1, len(CANDIDATES), 2, len(self.horizons))
        return self._to_world(e.transpose(2, 3), xy0, c, s)

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        z, est, xy0, c, s = self._inputs(history)
        n_k = len(self.horizons)
        hid = self.trunk(z)
        weights = torch.softmax(self.blend_head(hid) + self.blend_bias, dim=-1)  # [B, C]
        blend = (weights[:, :, None] * self._ego_positions(est)).sum(1)  # [B, 2K]
        blend = blend.reshape(-1, 2, n_k).transpose(1, 2)  # [B, K, 2]
        r = (self.residual_head(hid) + self.residual_linear(z)).reshape(-1, n_k, 2)
        bound = RESIDUAL_MPS * self.horizons[:, None]
        return self._to_world(blend + bound * torch.tanh(r / bound), xy0, c, s)

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
