"""Model semantics (ego frame, CV residual) and ONNX export equal to torch within 1e-5."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from schemas.model_spec import DEFAULT_SPEC, INPUT_NAME, OUTPUT_NAME
from trainer.export import ExportError, OnnxExporter
from trainer.metrics import constant_velocity
from trainer.model import build_model, trainable_state

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


def test_untrained_model_is_the_constant_velocity_baseline() -> None:
    model = build_model(DEFAULT_SPEC, 64, seed=3)
    w = random_windows(32, 0)
    out = model(torch.from_numpy(w)).detach().numpy()
    np.testing.assert_allclose(out, constant_velocity(w, DEFAULT_SPEC.horizons_s), atol=2e-4)


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
