"""Swap validation: each bad model is rejected with its reason, a good one warms and swaps."""

from __future__ import annotations

import dataclasses
import gc
import resource
import weakref

import numpy as np
import pytest

from inference.errors import ModelRejected
from inference.metrics import ServeMetrics
from inference.swap import ModelSwapper
from inference.validate import ValidationPolicy, validate
from schemas.model_spec import DEFAULT_SPEC
from schemas.sensor import SensorFrame
from tests.model_fixtures import (
    cv_onnx,
    envelope,
    nan_onnx,
    wrong_input_name_onnx,
    wrong_signature_onnx,
)

POLICY = ValidationPolicy(device="cpu", batch_shapes=(1, 2, 4, 8), min_truth_samples=16)
NO_TRUTH = (np.zeros((0, 10, 7), np.float32), np.zeros((0, 4, 2), np.float32))


@pytest.fixture(scope="module")
def good() -> bytes:
    return cv_onnx()


@pytest.fixture(scope="module")
def truth() -> tuple[np.ndarray, np.ndarray]:
    """Recent ground truth from straight-driving vehicles (where CV is exact)."""
    from inference.history import HistoryStore

    store = HistoryStore(DEFAULT_SPEC, truth_every=1)
    for v in range(4):
        for i in range(60):
            t = i / 10
            store.add(SensorFrame(f"v{v}", i, i * 10**8, 8.0 * t, 3.0 * v, 8.0, 0.0, 0.0, 0.0), v)
    return store.truth()


def reason_of(env, serving=None, truth=NO_TRUTH) -> str:
    with pytest.raises(ModelRejected) as info:
        validate(env, POLICY, serving, truth)
    return info.value.reason


def test_good_model_is_warmed_on_every_batch_shape(good, truth) -> None:
    model = validate(envelope(good, 1), POLICY, None, truth)
    assert model.provider == "CPUExecutionProvider"
    assert sorted(model.warm_ms) == [1, 2, 4, 8]
    out = model.run(truth[0][:3])
    assert np.allclose(out, truth[1][:3], atol=1e-3)


def test_corrupt_bytes_fail_the_digest(good) -> None:
    env = envelope(good, 1)
    bad = dataclasses.replace(env, onnx=good[:-10] + b"\x00" * 10, digest=env.digest)
    assert reason_of(bad) == "digest"


def test_corrupt_bytes_with_matching_digest_fail_the_onnx_checker(good) -> None:
    assert reason_of(envelope(good[: len(good) // 2], 1)) == "onnx_checker"


def test_wrong_output_signature_is_rejected() -> None:
    assert reason_of(envelope(wrong_signature_onnx(), 1)) == "signature"


def test_wrong_input_name_is_rejected() -> None:
    assert reason_of(envelope(wrong_input_name_onnx(), 1)) == "signature"


def test_nan_outputs_are_rejected() -> None:
    assert reason_of(envelope(nan_onnx(), 1)) == "non_finite"


def test_clearly_worse_model_is_rejected_against_the_serving_one(good, truth) -> None:
    serving = validate(envelope(good, 1), POLICY, None, truth)
    worse = envelope(cv_onnx(offset_m=5.0), 2)
    assert reason_of(worse, serving, truth) == "accuracy"
    assert reason_of(envelope(cv_onnx(offset_m=0.2), 3), serving, truth) == "accuracy"
    slightly = envelope(cv_onnx(offset_m=0.03), 4)  # inside 10 % + 5 cm of GNSS-noise slack
    assert validate(slightly, POLICY, serving, truth).version == 4


def test_first_model_is_compared_with_the_physics_fallback(truth) -> None:
    assert reason_of(envelope(cv_onnx(offset_m=5.0), 1), None, truth) == "accuracy"


def test_rejected_model_leaves_the_old_one_serving(good, truth) -> None:
    metrics = ServeMetrics()
    swapper = ModelSwapper(POLICY, lambda: truth, metrics)
    assert swapper.offer(envelope(good, 1)) is not None
    serving = swapper.take_ready()
    assert serving is not None and serving.version == 1
    assert swapper.offer(envelope(nan_onnx(), 2)) is None
    assert swapper.offer(envelope(good, 1)) is None  # not newer
    assert swapper.take_ready() is None
    assert [r.reason for r in swapper.rejections] == ["non_finite", "stale_version"]
    text = metrics.render().decode()
    assert 'outcome="rejected",reason="non_finite"' in text


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def test_memory_stays_flat_over_100_swaps(good) -> None:
    """Every retired model and its ORT session is freed (weakrefs die), and RSS stays flat."""
    swapper = ModelSwapper(POLICY, lambda: NO_TRUTH, ServeMetrics())
    serving = None
    retired: list[tuple[int, weakref.ref, weakref.ref]] = []

    def swap(version: int) -> None:
        nonlocal serving
        assert swapper.offer(envelope(good, version)) is not None
        new = swapper.take_ready()
        if serving is not None:
            retired.append((serving.version, weakref.ref(serving), weakref.ref(serving.session)))
            swapper.retire(serving)
        serving = new
        swapper.release_retired()

    for v in range(1, 21):  # settle allocator arenas first
        swap(v)
    gc.collect()
    before = _rss_mb()
    for v in range(21, 121):
        swap(v)
    gc.collect()
    alive = [v for v, model, session in retired if model() is not None or session() is not None]
    assert len(retired) == 119 and not alive, f"retired models still referenced: {alive[:10]}"
    assert serving is not None and serving.version == 120
    grown = _rss_mb() - before
    assert grown < 20, f"RSS grew {grown:.1f} MB over 100 swaps"
