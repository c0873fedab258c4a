"""The model learns one vehicle fast: on a constant turn whose yaw-rate sensor is biased
and noisy, test-then-train error drops below CTRV on that sensor within 40 s of log; and
the residual network waits for its warm-up of samples while the blend learns at once."""

from __future__ import annotations

import math

import numpy as np
import torch

from schemas.kinematics import predict_ctrv
from schemas.model_spec import DEFAULT_SPEC
from schemas.sensor import SensorFrame
from trainer.config import TrainConfig
from trainer.model import build_model
from trainer.pretrain import local_group, replay_log

NS = 1_000_000_000


def turning_vehicle(seconds: float, seed: int) -> list[SensorFrame]:
    """10 m/s on a 0.15 rad/s circle; GNSS noise 0.2 m, yaw sensor +0.08 rad/s bias."""
    rng = np.random.default_rng(seed)
    v, w, out = 10.0, 0.15, []
    for k in range(int(seconds * 10)):
        t = k * 0.1
        h = w * t
        x = v / w * math.sin(h) + rng.normal(0, 0.2)
        y = v / w * (1 - math.cos(h)) + rng.normal(0, 0.2)
        heading = math.atan2(math.sin(h), math.cos(h)) + rng.normal(0, 0.01)
        yaw = w + 0.08 + rng.normal(0, 0.03)
        out.append(SensorFrame("veh", k, round(t * NS), x, y, v, heading, yaw, 0.0))
    return out


def test_error_drops_below_ctrv_with_the_noisy_yaw_sensor_within_40_s() -> None:
    torch.set_num_threads(1)
    scored: list[tuple[int, float, float]] = []
    prior = build_model(DEFAULT_SPEC, TrainConfig().hidden, 0).eval()
    untrained: list[float] = []

    def on_scored(samples, pred) -> None:  # type: ignore[no-untyped-def]
        with torch.no_grad():
            p0 = prior(torch.from_numpy(np.stack([s.window for s in samples]))).numpy()
        untrained.extend(np.linalg.norm(p0[:, -1] - [s.target[-1] for s in samples], axis=-1))
        for s, p in zip(samples, pred, strict=True):
            last = s.window[-1].astype(np.float64)
            ctrv = predict_ctrv(*last[1:6], DEFAULT_SPEC.horizons_s)[0]
            scored.append(
                (
                    s.t_anchor_ns,
                    float(np.linalg.norm(p[-1] - s.target[-1])),
                    float(np.linalg.norm(ctrv[-1] - s.target[-1])),
                )
            )

    with local_group():
        replay_log(TrainConfig(holdout_fraction=0.0), turning_vehicle(40.0, 0), on_scored=on_scored)
    t = np.array([s[0] for s in scored]) / NS
    model, ctrv = np.array([s[1] for s in scored]), np.array([s[2] for s in scored])
    late = t > t.max() - 10
    assert model[late].mean() < 0.7 * ctrv[late].mean(), (model[late].mean(), ctrv[late].mean())
    assert model[late].mean() < 0.8 * np.array(untrained)[late].mean(), "it beat its prior"


def test_residual_network_waits_for_data_while_the_blend_learns() -> None:
    torch.set_num_threads(1)
    cfg = TrainConfig(holdout_fraction=0.0, residual_warmup_samples=10**9)
    start = build_model(DEFAULT_SPEC, cfg.hidden, cfg.seed)
    with local_group():
        loop = replay_log(cfg, turning_vehicle(10.0, 1))
    ramp = cfg.residual_lr * loop.counters.samples / cfg.residual_warmup_samples
    assert loop.counters.samples > 0 and loop.residual_lr() == ramp
    blend, residual = loop.model.param_groups()
    _, before = start.param_groups()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(residual, before, strict=True))
    assert not torch.equal(blend[0], start.blend_bias), "the blend logits learnt"
