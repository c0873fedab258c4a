"""The prediction model: raw history window in, absolute future positions out.

Feature engineering lives inside the module (decision 2) so the exported ONNX graph reads
exactly the schemas.model_spec input: it translates to the newest position, rotates by the
newest heading (ego frame), normalises with fixed constants, and predicts ego-frame
displacements as a residual on a constant-velocity baseline computed in-graph. The last
layer starts at zero, so an untrained model *is* the CV baseline.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from schemas.model_spec import InputSpec

# per-step ego features: dt, ex, ey, speed, cos(dh), sin(dh), yaw_rate, accel
_FEATURE_SCALE = (1.0, 1 / 10.0, 1 / 10.0, 1 / 20.0, 1.0, 1.0, 1 / 0.5, 1 / 3.0)


class TrajectoryMLP(nn.Module):
    """MLP over the ego-frame window predicting a residual on CV per horizon."""

    horizons: torch.Tensor
    feature_scale: torch.Tensor

    def __init__(self, spec: InputSpec, hidden: int = 128) -> None:
        super().__init__()
        self.spec = spec
        n_h = len(spec.horizons_s)
        self.register_buffer("horizons", torch.tensor(spec.horizons_s, dtype=torch.float32))
        self.register_buffer("feature_scale", torch.tensor(_FEATURE_SCALE, dtype=torch.float32))
        self.net = nn.Sequential(
            nn.Linear(spec.history * len(_FEATURE_SCALE), hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, n_h * 2),
        )
        head = self.net[-1]
        assert isinstance(head, nn.Linear)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        last = history[:, -1, :]
        x0, y0 = last[:, 1:2], last[:, 2:3]
        h0 = last[:, 4:5]
        c, s = torch.cos(h0), torch.sin(h0)
        rx, ry = history[:, :, 1] - x0, history[:, :, 2] - y0
        dh = history[:, :, 4] - h0
        feats = torch.stack(
            [
                history[:, :, 0],
                c * rx + s * ry,
                c * ry - s * rx,
                history[:, :, 3],
                torch.cos(dh),
                torch.sin(dh),
                history[:, :, 5],
                history[:, :, 6],
            ],
            dim=-1,
        )
        z = self.net((feats * self.feature_scale).flatten(1))
        z = z.reshape(-1, self.horizons.shape[0], 2) * self.horizons[None, :, None]
        ex = last[:, 3:4] * self.horizons[None, :] + z[:, :, 0]
        ey = z[:, :, 1]
        return torch.stack([x0 + c * ex - s * ey, y0 + s * ex + c * ey], dim=-1)


def build_model(spec: InputSpec, hidden: int, seed: int) -> TrajectoryMLP:
    """Deterministic init: the server and every rank build the same version-0 weights."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return TrajectoryMLP(spec, hidden)
    finally:
        torch.random.set_rng_state(gen_state)


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
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Sum over samples of weight x mean displacement error (metres) over horizons."""
    err = torch.sqrt(((pred - target) ** 2).sum(-1) + 1e-6).mean(-1)
    return (err * weight).sum()
