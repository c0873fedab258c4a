"""Physics fallback against analytic trajectories."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inference import fallback
from schemas import kinematics

H = (0.5, 1.0, 2.0, 3.0)


@pytest.mark.parametrize("heading", [0.0, 0.7, -2.5, math.pi])
def test_straight_line_matches_constant_velocity(heading: float) -> None:
    name, xs, ys = fallback.predict_one(10.0, -4.0, 12.0, heading, 0.0, H)
    assert name == fallback.CV
    for h, x, y in zip(H, xs, ys, strict=True):
        assert x == pytest.approx(10.0 + 12.0 * math.cos(heading) * h)
        assert y == pytest.approx(-4.0 + 12.0 * math.sin(heading) * h)


@pytest.mark.parametrize("yaw_rate", [0.3, -0.5, 1.2])
def test_constant_turn_stays_on_the_circle(yaw_rate: float) -> None:
    x0, y0, v, th = 5.0, 2.0, 8.0, 0.4
    name, xs, ys = fallback.predict_one(x0, y0, v, th, yaw_rate, H)
    assert name == fallback.CTRV
    r = v / yaw_rate
    cx, cy = x0 - r * math.sin(th), y0 + r * math.cos(th)  # centre of the turn
    for h, x, y in zip(H, xs, ys, strict=True):
        assert math.hypot(x - cx, y - cy) == pytest.approx(abs(r))
        assert x == pytest.approx(cx + r * math.sin(th + yaw_rate * h))
        assert y == pytest.approx(cy - r * math.cos(th + yaw_rate * h))


def test_quarter_turn_ends_where_geometry_says() -> None:
    # 10 m/s, turning left at pi/6 rad/s: after 3 s heading has turned 90 degrees.
    w = math.pi / 6
    r = 10.0 / w
    _, xs, ys = fallback.predict_one(0.0, 0.0, 10.0, 0.0, w, (3.0,))
    assert (xs[0], ys[0]) == pytest.approx((r, r))


def test_tiny_yaw_rate_uses_cv_and_is_continuous() -> None:
    name, xs, ys = fallback.predict_one(0.0, 0.0, 20.0, 1.0, 1e-5, H)
    assert name == fallback.CV
    _, xs2, ys2 = fallback.predict_one(0.0, 0.0, 20.0, 1.0, 2e-3, H)
    assert np.allclose(xs, xs2, atol=0.2) and np.allclose(ys, ys2, atol=0.2)


def test_vectorised_matches_scalar() -> None:
    rng = np.random.default_rng(0)
    windows = np.zeros((20, 10, 7), np.float32)
    windows[:, -1, 1:3] = rng.uniform(-100, 100, (20, 2))
    windows[:, -1, 3] = rng.uniform(0, 30, 20)
    windows[:, -1, 4] = rng.uniform(-3, 3, 20)
    windows[:, -1, 5] = np.where(np.arange(20) % 3 == 0, 0.0, rng.uniform(-1, 1, 20))
    out = fallback.predict_windows(windows, H)
    for i, w in enumerate(windows[:, -1, :].astype(np.float64)):
        _, xs, ys = fallback.predict_one(w[1], w[2], w[3], w[4], w[5], H)
        assert np.allclose(out[i, :, 0], xs, atol=1e-3)
        assert np.allclose(out[i, :, 1], ys, atol=1e-3)


def test_fallback_is_schemas_kinematics() -> None:
    """One set of formulas: the fallback answers exactly what the shared baselines say."""
    _, xs, ys = fallback.predict_one(3.0, 4.0, 9.0, 0.5, 0.4, H)
    ref = kinematics.predict_ctrv(3.0, 4.0, 9.0, 0.5, 0.4, H)[0]
    assert (xs, ys) == (tuple(ref[:, 0]), tuple(ref[:, 1]))
    _, xs, ys = fallback.predict_one(3.0, 4.0, 9.0, 0.5, 0.0, H)
    ref = kinematics.predict_cv(3.0, 4.0, 9.0, 0.5, H)[0]
    assert (xs, ys) == (tuple(ref[:, 0]), tuple(ref[:, 1]))


def test_yaw_eps_picks_cv_or_ctrv() -> None:
    assert fallback.predict_one(0, 0, 10, 0, 0.02, H, yaw_eps=0.05)[0] == fallback.CV
    assert fallback.predict_one(0, 0, 10, 0, 0.02, H, yaw_eps=0.01)[0] == fallback.CTRV
