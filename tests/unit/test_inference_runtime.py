"""ONNX Runtime sessions: the I/O-binding path (what the CUDA EP uses) answers like run()."""

from __future__ import annotations

import numpy as np

from inference.runtime import CPU, CUDA, LoadedModel, build_session, choose_providers
from schemas.model_spec import DEFAULT_SPEC
from tests.model_fixtures import cv_onnx, envelope


def test_io_binding_path_matches_plain_run() -> None:
    """CI has no GPU: bind the output to the CPU to exercise the binding calls the CUDA EP
    path makes (bind input, bind output by device, run, copy out)."""
    env = envelope(cv_onnx(), 1)
    session, provider = build_session(env.onnx, device="cpu")
    plain = LoadedModel(env, session, provider)
    bound = LoadedModel(env, session, provider, bind_output_to="cpu")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, DEFAULT_SPEC.history, len(DEFAULT_SPEC.features))).astype(np.float32)
    x[:, :, 0] = np.linspace(-0.9, 0.0, DEFAULT_SPEC.history)
    assert plain.bind_output_to is None and provider == CPU
    np.testing.assert_array_equal(bound.run(x), plain.run(x))
    assert bound.run(x).shape == (8, len(DEFAULT_SPEC.horizons_s), 2)


def test_cuda_provider_binds_its_output_on_the_gpu_and_cpu_stays_last() -> None:
    env = envelope(cv_onnx(), 1)
    session, _ = build_session(env.onnx, device="cpu")
    assert LoadedModel(env, session, CUDA).bind_output_to == "cuda"
    assert choose_providers("cuda") == [CUDA, CPU] and choose_providers("cpu") == [CPU]
