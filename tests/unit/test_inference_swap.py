"""Swap validation: each bad model is rejected with its reason, a good one warms and swaps;
only signed models in the trusted lineage are considered, at start-up as live."""

from __future__ import annotations

import dataclasses
import gc
import resource
import weakref

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from inference.errors import ModelRejected
from inference.gate import MODEL, GatePolicy, PredictorGate
from inference.metrics import ServeMetrics
from inference.swap import ModelSwapper, ModelWatcher
from inference.validate import ValidationPolicy, validate
from schemas.envelope import encode_envelope, envelope_headers
from schemas.kafka import KafkaSettings, Message
from schemas.model_spec import DEFAULT_SPEC
from schemas.sensor import SensorFrame
from tests.model_fixtures import (
    cv_onnx,
    envelope,
    nan_onnx,
    trusting_test_key,
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
            store.add_frame(
                SensorFrame(f"v{v}", i, i * 10**8, 8.0 * t, 3.0 * v, 8.0, 0.0, 0.0, 0.0), v
            )
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
    swapper = ModelSwapper(POLICY, lambda: truth, metrics, trust=trusting_test_key())
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
    swapper = ModelSwapper(POLICY, lambda: NO_TRUTH, ServeMetrics(), trust=trusting_test_key())
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


def reasons(swapper: ModelSwapper) -> list[str]:
    return [r.reason for r in swapper.rejections]


def test_only_envelopes_signed_by_a_trusted_key_are_considered(good) -> None:
    metrics = ServeMetrics()
    swapper = ModelSwapper(POLICY, lambda: NO_TRUTH, metrics, trust=trusting_test_key())
    assert swapper.offer(envelope(good, 1, key=None)) is None
    assert swapper.offer(envelope(good, 1, key=Ed25519PrivateKey.generate())) is None
    tampered = dataclasses.replace(envelope(good, 1), steps=999)
    assert swapper.offer(tampered) is None
    assert reasons(swapper) == ["unsigned", "untrusted_key", "bad_signature"]
    assert swapper.builds_started == 0  # refused before any ONNX is parsed
    assert swapper.offer(envelope(good, 1)) is not None
    assert 'outcome="rejected",reason="untrusted_key"' in metrics.render().decode()


def test_unsigned_envelopes_pass_only_in_unsigned_mode(good) -> None:
    swapper = ModelSwapper(
        POLICY, lambda: NO_TRUTH, ServeMetrics(), trust=trusting_test_key(allow_unsigned=True)
    )
    assert swapper.offer(envelope(good, 1, key=None)) is not None
    assert swapper.offer(dataclasses.replace(envelope(good, 2), steps=1)) is None
    assert reasons(swapper) == ["bad_signature"]  # a trusted key's broken signature: still no


def test_the_outsiders_huge_version_owns_nothing(good) -> None:
    """An unsigned 10**9 is refused; a signed runaway jump too; the next export swaps in."""
    swapper = ModelSwapper(POLICY, lambda: NO_TRUTH, ServeMetrics(), trust=trusting_test_key())
    assert swapper.offer(envelope(good, 5)) is not None
    assert swapper.offer(envelope(good, 10**9, key=None)) is None
    assert swapper.offer(envelope(good, 5 + 10_001)) is None
    assert swapper.offer(envelope(good, 4, parent_version=9)) is None
    assert swapper.offer(envelope(good, 6)) is not None
    assert reasons(swapper) == ["unsigned", "version_jump", "stale_version"]
    assert swapper.offer(envelope(good, 8, parent_version=9)) is None
    assert swapper.offer(envelope(good, 6 + 10_000)) is not None  # the jump limit itself is ok
    assert reasons(swapper)[-1] == "lineage"


def test_a_replayed_old_signed_envelope_is_refused_as_not_newer(good) -> None:
    swapper = ModelSwapper(POLICY, lambda: NO_TRUTH, ServeMetrics(), trust=trusting_test_key())
    v1, v2 = envelope(good, 1), envelope(good, 2)
    assert swapper.offer(v1) is not None and swapper.offer(v2) is not None
    assert swapper.offer(v1) is None and swapper.offer(v2) is None
    assert reasons(swapper) == ["stale_version", "stale_version"]


class Truth:
    """Recent ground truth for the swapper and the gate, set by the test ('none yet')."""

    def __init__(self) -> None:
        self.value = NO_TRUTH

    def __call__(self) -> tuple[np.ndarray, np.ndarray]:
        return self.value

    def scored(self, within_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        w, t = self.value
        return w, t, np.full(t.shape, np.nan, np.float32)


def record(env) -> Message:
    return Message("models", 0, env.version, 0, env.name.encode(), encode_envelope(env), [])


def test_restart_validates_the_topic_like_a_live_swap_and_physics_answers_until_truth(
    good, truth
) -> None:
    """The topic holds a good v1 and a newer, signed but grossly wrong v2 (and junk)."""
    live = Truth()
    metrics = ServeMetrics()
    gate = PredictorGate(
        GatePolicy(min_samples=20), live.scored, lambda: DEFAULT_SPEC.horizons_s, metrics
    )
    swapper = ModelSwapper(POLICY, live, metrics, gate=gate, trust=trusting_test_key())
    watcher = ModelWatcher(KafkaSettings(), "models", swapper)
    dead: list[tuple[int, str]] = []
    swapper.dead_letter = lambda msg, exc: dead.append((msg.offset, exc.reason))
    wrong = envelope(cv_onnx(offset_m=20.0), 2)
    backlog = [record(envelope(good, 1)), record(wrong), record(envelope(good, 10**9, key=None))]
    backlog = [m._replace(headers=envelope_headers()) for m in backlog]
    backlog.append(Message("models", 0, 9, 0, b"x", b"\x00junk", envelope_headers()))
    watcher._start_with_newest(backlog)
    # no ground truth yet: nothing is loaded blindly, physics answers
    assert swapper.take_ready() is None and swapper.waiting == 2
    assert reasons(swapper) == ["undecodable", "unsigned"]
    swapper.tick()
    assert swapper.take_ready() is None and swapper.builds_started == 0
    assert gate.verdict(2).predictor != MODEL and gate.verdict(-1).predictor != MODEL
    # truth arrives: the wrong newest fails on accuracy, the good one is validated and judged
    live.value = truth
    swapper.tick()
    model = swapper.take_ready()
    assert model is not None and model.version == 1
    assert reasons(swapper) == ["undecodable", "unsigned", "accuracy"] and swapper.waiting == 0
    # every rejected record is dead-lettered with its reason, the wrong v2 too
    assert dead == [(9, "undecodable"), (10**9, "unsigned"), (2, "accuracy")]
    # judged at once, and still physics until v1's own answers meet their truth
    assert gate.verdict(1).version == 1 and gate.verdict(1).predictor != MODEL
    text = metrics.render().decode()
    assert 'reason="undecodable"' in text and 'reason="accuracy"' in text
    # the restart anchored the lineage: a replay of v2 is stale, the next export is judged
    assert swapper.offer(wrong) is None and reasons(swapper)[-1] == "stale_version"
    assert swapper.offer(envelope(good, 3)) is not None


def test_restart_with_the_gate_off_validates_the_newest_at_once(good) -> None:
    swapper = ModelSwapper(POLICY, lambda: NO_TRUTH, ServeMetrics(), trust=trusting_test_key())
    swapper.start([envelope(good, 1), envelope(nan_onnx(), 3), envelope(good, 2)])
    model = swapper.take_ready()
    assert model is not None and model.version == 2 and reasons(swapper) == ["non_finite"]
