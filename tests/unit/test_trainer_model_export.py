"""Model semantics (physics prior, ego frame, robustness) and ONNX export equal to torch."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from inference.runtime import session_options
from schemas.errors import ExportError
from schemas.kinematics import predict_ctrv, predict_cv
from schemas.model_spec import DEFAULT_SPEC, INPUT_NAME, OUTPUT_NAME
from trainer.export import OnnxExporter
from trainer.model import (
    CANDIDATES,
    PRIOR_WEIGHTS,
    SENSOR_YAW_FRAMES,
    _wrap,
    build_model,
    trainable_state,
)

torch.set_num_threads(1)


def random_windows(n: int, seed: int, offset: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = np.zeros((n, DEFAULT_SPEC.history, 7), np.float32)
    w[:, :, 0] = np.linspace(-0.9, 0.0, DEFAULT_SPEC.history)
    w[:, :, 1:3] = rng.normal(0, 30, (n, DEFAULT_SPEC.history, 2)) + offset
    w[:, :, 3] = rng.uniform(0, 30, (n, DEFAULT_SPEC.history))
    w[:, :, 4] = rng.uniform(-np.pi, np.pi, (n, DEFAULT_SPEC.history))
    w[:, :, 5] = rng.normal(0, 0.3, (n, DEFAULT_SPEC.history))
    w[:, :, 6] = rng.normal(0, 2, (n, DEFAULT_SPEC.history))
    return w


def perturbed_model(seed: int) -> torch.nn.Module:
    model = build_model(DEFAULT_SPEC, 64, seed=0)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


def run_onnx(blob: bytes, windows: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    return sess.run([OUTPUT_NAME], {INPUT_NAME: windows})[0]


def test_untrained_model_is_its_physics_prior() -> None:
    model = build_model(DEFAULT_SPEC, 64, seed=3)
    w = torch.from_numpy(random_windows(32, 0))
    weights = torch.softmax(model.blend_bias, 0).detach()
    np.testing.assert_allclose(weights.numpy(), PRIOR_WEIGHTS, atol=0.01)
    expected = (weights[None, :, None, None] * model.candidates(w)).sum(1).detach()
    np.testing.assert_allclose(model(w).detach().numpy(), expected.numpy(), atol=1e-4)


def test_in_graph_candidates_are_the_closed_form_cv_and_ctrv() -> None:
    model = build_model(DEFAULT_SPEC, 64, seed=3)
    w = random_windows(32, 0)
    w[:, -SENSOR_YAW_FRAMES:, 5] = w[:, -1:, 5]  # the sensor yaw rate the model averages
    last = w[:, -1].astype(np.float64)
    cands = model.candidates(torch.from_numpy(w)).detach().numpy()
    names = [c[0] for c in CANDIDATES]
    hs = DEFAULT_SPEC.horizons_s
    cv = predict_cv(last[:, 1], last[:, 2], last[:, 3], last[:, 4], hs)
    ctrv = predict_ctrv(last[:, 1], last[:, 2], last[:, 3], last[:, 4], last[:, 5], hs)
    np.testing.assert_allclose(cands[:, names.index("cv")], cv, atol=1e-2)
    np.testing.assert_allclose(cands[:, names.index("ctrv")], ctrv, atol=3e-2)  # midpoint sum


def wild_windows(n: int, seed: int) -> np.ndarray:
    """Finite but implausible windows: equal times, standstill, spikes, far positions."""
    rng = np.random.default_rng(seed)
    w = random_windows(n, seed, offset=9e5)
    w[: n // 4, :, 0] = 0.0  # every frame at the same time
    w[n // 4 : n // 2, :, 3] = 0.0  # standing still
    w[n // 2 :, :, 1:3] += rng.normal(0, 1e3, (n - n // 2, DEFAULT_SPEC.history, 2))
    w[:, :, 3] = np.where(rng.random(w.shape[:2]) < 0.2, 120.0, w[:, :, 3])
    w[:, :, 5] = rng.uniform(-4, 4, w.shape[:2])
    w[:, :, 6] = rng.uniform(-30, 30, w.shape[:2])
    w[:, :, 4] = rng.uniform(-np.pi, np.pi, w.shape[:2])
    return w


def test_prediction_is_finite_and_bounded_for_wild_inputs() -> None:
    model = perturbed_model(5)
    w = wild_windows(64, 7)
    exporter = OnnxExporter(model, DEFAULT_SPEC)
    for out in (model(torch.from_numpy(w)).detach().numpy(),
                run_onnx(exporter.export(trainable_state(model)), w)):  # fmt: skip
        assert np.isfinite(out).all()
        reach = np.linalg.norm(out - w[:, -1:, 1:3], axis=-1)
        assert reach.max() < 3.0 * 80 + 9.0 + 1.0  # speed cap x horizon + residual bound


def test_prediction_is_invariant_to_translation_and_rotation_of_the_world() -> None:
    model = perturbed_model(1)
    w = random_windows(8, 1)
    shifted = w.copy()
    shifted[:, :, 1] += 123.0
    shifted[:, :, 2] -= 45.0
    a = model(torch.from_numpy(w)).detach().numpy()
    b = model(torch.from_numpy(shifted)).detach().numpy()
    np.testing.assert_allclose(b - a, np.broadcast_to([123.0, -45.0], a.shape), atol=1e-3)


@pytest.mark.parametrize("offset", [0.0, 1500.0])
def test_onnx_matches_torch_within_1e_5_and_passes_the_checker(offset: float) -> None:
    model = perturbed_model(2)
    exporter = OnnxExporter(model, DEFAULT_SPEC)
    blob = exporter.export(trainable_state(model))
    onnx.checker.check_model(onnx.load_from_string(blob), full_check=True)
    for batch in (1, 7, 64):  # the batch dimension is dynamic
        w = random_windows(batch, batch, offset)
        ref = model(torch.from_numpy(w)).detach().numpy()
        got = run_onnx(blob, w)
        assert got.shape == (batch, len(DEFAULT_SPEC.horizons_s), 2)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_patched_initializers_track_new_weights() -> None:
    exporter = OnnxExporter(perturbed_model(3), DEFAULT_SPEC)
    later = perturbed_model(4)  # same architecture, other weights
    w = random_windows(16, 5)
    got = run_onnx(exporter.export(trainable_state(later)), w)
    np.testing.assert_allclose(
        got, later(torch.from_numpy(w)).detach().numpy(), rtol=1e-5, atol=1e-5
    )


def test_export_refuses_weights_of_another_architecture() -> None:
    exporter = OnnxExporter(perturbed_model(3), DEFAULT_SPEC)
    other = trainable_state(build_model(DEFAULT_SPEC, 32, seed=0))
    with pytest.raises(ExportError, match="shape"):
        exporter.export(other)


def test_heading_unwrap_agrees_with_atan2() -> None:
    angles = torch.cat(
        [torch.linspace(-2 * np.pi, 2 * np.pi, 10_001), torch.tensor([np.pi - 1e-6, -np.pi + 1e-6])]
    )
    expected = torch.atan2(torch.sin(angles), torch.cos(angles))
    got = _wrap(angles)
    assert float(got.abs().max()) <= np.pi + 1e-6
    # the same angle: equal up to float32 rounding, or the two names of +-pi
    diff = (got - expected).abs()
    assert bool(((diff < 1e-5) | ((diff - 2 * np.pi).abs() < 1e-5)).all())


def test_checkpoints_keep_their_keys() -> None:
    """Trainer checkpoints hold model.state_dict(): its keys stay those older checkpoints
    have, so they load strictly (buffers added for the graph are not saved)."""
    model = build_model(DEFAULT_SPEC, 64, seed=0)
    params = {k for k, _ in model.named_parameters()}
    saved = ("horizons", "feature_scale", "estimate_scale", "grid_t", "grid_w")
    saved += ("use_accel", "use_position", "yaw_select")
    assert set(model.state_dict()) == params | set(saved)
    build_model(DEFAULT_SPEC, 64, seed=1).load_state_dict(model.state_dict())


def test_onnx_graph_stays_small() -> None:
    """ONNX Runtime's cost for a lone window is mostly per node (~0.3 us each here): the
    graph the session runs stays at the size it was cut to (177 nodes before)."""
    model = build_model(DEFAULT_SPEC, 64, seed=0)
    blob = OnnxExporter(model, DEFAULT_SPEC).export(trainable_state(model))
    options = session_options(1)
    with tempfile.TemporaryDirectory() as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
        nodes = len(onnx.load(options.optimized_model_filepath).graph.node)
    assert nodes <= 130, nodes
