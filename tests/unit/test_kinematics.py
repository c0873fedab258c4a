"""CV, CA and CTRV baselines against analytic trajectories."""

from __future__ import annotations

import math

import numpy as np
import pytest

from schemas.kinematics import displacement_errors, predict_ca, predict_ctrv, predict_cv

H = (0.5, 1.0, 2.0, 3.0)


def test_cv_moves_along_heading():
    out = predict_cv(10.0, -5.0, 20.0, math.pi / 2, H)
    assert out.shape == (1, 4, 2)
    np.testing.assert_allclose(out[0, :, 0], 10.0, atol=1e-9)
    np.testing.assert_allclose(out[0, :, 1], [-5 + 20 * t for t in H])


def test_ctrv_follows_the_circle():
    v, w, h0 = 15.0, 0.3, 0.4
    out = predict_ctrv(0.0, 0.0, v, h0, w, H)[0]
    radius = v / w
    # Centre of the turn lies a radius to the left of the heading.
    cx, cy = -radius * math.sin(h0), radius * math.cos(h0)
    np.testing.assert_allclose(np.hypot(out[:, 0] - cx, out[:, 1] - cy), radius, rtol=1e-9)
    for t, (px, py) in zip(H, out, strict=True):
        angle = h0 + w * t
        assert px == pytest.approx(cx + radius * math.sin(angle))
        assert py == pytest.approx(cy - radius * math.cos(angle))


def test_ctrv_equals_cv_when_yaw_rate_is_zero_and_is_continuous_near_it():
    cv = predict_cv([1.0], [2.0], [12.0], [0.7], H)
    np.testing.assert_allclose(predict_ctrv([1.0], [2.0], [12.0], [0.7], [0.0], H), cv)
    np.testing.assert_allclose(predict_ctrv([1.0], [2.0], [12.0], [0.7], [2e-3], H), cv, atol=0.2)


def test_errors_are_euclidean_per_horizon():
    pred = np.zeros((2, 4, 2))
    truth = np.zeros((2, 4, 2))
    truth[1, 3] = (3.0, 4.0)
    errors = displacement_errors(pred, truth)
    assert errors.shape == (2, 4)
    assert errors[1, 3] == 5.0 and errors.sum() == 5.0


def test_ca_accelerates_along_heading_and_a_braking_vehicle_stops() -> None:
    out = predict_ca([0.0, 0.0], [0.0, 0.0], [10.0, 4.0], [0.0, math.pi / 2], [2.0, -2.0], H)
    np.testing.assert_allclose(out[0, :, 0], [10 * h + h * h for h in H])
    np.testing.assert_allclose(out[0, :, 1], 0.0, atol=1e-12)
    # 4 m/s braking at 2 m/s^2 stops after 2 s and 4 m; it never reverses
    np.testing.assert_allclose(out[1, -2:, 1], [4.0, 4.0])
    np.testing.assert_allclose(out[1, 0, 1], 4 * 0.5 - 0.25)
