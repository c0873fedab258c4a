"""The never-worse gate: physics answers whenever the model loses to it on recent truth."""

from __future__ import annotations

import numpy as np
import pytest

from inference import fallback
from inference.gate import MODEL, GatePolicy, PredictorGate, physics_predictions
from inference.metrics import ServeMetrics
from inference.validate import ValidationPolicy, validate
from schemas.model_spec import DEFAULT_SPEC
from tests.model_fixtures import cv_onnx, envelope

H = DEFAULT_SPEC.horizons_s
NO_TRUTH = (np.zeros((0, 10, 7), np.float32), np.zeros((0, 4, 2), np.float32))


def windows(n: int, yaw_rate: float = 0.0) -> np.ndarray:
    """Straight-driving windows at 10 Hz; ``yaw_rate`` is what the sensor *claims*."""
    rng = np.random.default_rng(0)
    out = np.zeros((n, 10, 7), np.float32)
    for i in range(n):
        v, h = rng.uniform(5, 15), rng.uniform(-3, 3)
        t = np.arange(-9, 1) / 10
        out[i, :, 0] = t
        out[i, :, 1] = v * np.cos(h) * t
        out[i, :, 2] = v * np.sin(h) * t
        out[i, :, 3], out[i, :, 4], out[i, :, 5] = v, h, yaw_rate
    return out


class Truth:
    """Recent ground truth the test sets directly, with what the model (CV moved 1 m east)
    answered for each window before its truth arrived."""

    def __init__(self) -> None:
        self.value = NO_TRUTH

    def __call__(self, within_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        w, t = self.value
        return w, t, cv_targets(w, 1.0) if len(w) else t


def cv_targets(w: np.ndarray, shift_x: float = 0.0) -> np.ndarray:
    out = physics_predictions(w, H, 1e-3)[fallback.CV].astype(np.float32)
    out[..., 0] += shift_x
    return out


@pytest.fixture(scope="module")
def model():
    """A model that is CV moved 1 m east: exact when the world is, 1 m off when not."""
    policy = ValidationPolicy(device="cpu", batch_shapes=(1,))
    return validate(envelope(cv_onnx(offset_m=1.0), 3), policy, None, NO_TRUTH)


def make_gate(truth: Truth, **kw) -> tuple[PredictorGate, ServeMetrics]:
    metrics = ServeMetrics()
    gate = PredictorGate(GatePolicy(min_samples=20, **kw), truth, lambda: H, metrics)
    return gate, metrics


def test_a_model_without_enough_truth_is_unproven_and_physics_answers(model) -> None:
    truth = Truth()
    gate, _ = make_gate(truth)
    assert gate.verdict(3).predictor != MODEL  # never judged
    w = windows(10)
    truth.value = (w, cv_targets(w, 1.0))  # the model would win, but on too little truth
    v = gate.judge(model)
    assert (v.predictor, v.reason) == (fallback.CTRV, "unproven")


def test_gate_switches_to_physics_and_back_with_the_truth(model) -> None:
    truth = Truth()
    gate, metrics = make_gate(truth)
    w = windows(40)
    truth.value = (w, cv_targets(w, 1.0))  # the world moved 1 m east: the model is right
    assert gate.judge(model).predictor == MODEL
    assert gate.verdict(3).predictor == MODEL
    truth.value = (w, cv_targets(w))  # now physics is exact and the model 1 m off
    v = gate.judge(model)
    # CV ties CTRV here: the physics answering (CTRV, the fallback's default) stays
    assert (v.predictor, v.reason) == (fallback.CTRV, "physics_better")
    assert v.fde_m[MODEL] == pytest.approx(1.0, abs=1e-3)
    assert gate.verdict(3).predictor != MODEL
    truth.value = (w, cv_targets(w, 1.0))
    assert gate.judge(model).predictor == MODEL  # it comes back when it is better again
    text = metrics.render().decode()
    assert 'drivestream_inference_gate_predictor{predictor="model"} 1.0' in text
    assert (
        'drivestream_inference_gate_switches_total{predictor="ctrv",reason="physics_better"} 1.0'
        in text
    )
    assert [s[1:] for s in gate.switches] == [
        ("model", ""),
        ("ctrv", "physics_better"),
        ("model", ""),
    ]


def test_a_tie_does_not_let_a_model_in_and_a_new_version_must_win_clearly(model) -> None:
    truth = Truth()
    gate, _ = make_gate(truth, rejoin_margin=0.1)
    w = windows(40)
    # truth = CV + (a, b): physics is 1.05 m off, the model (CV + 1 m east) 1.0 m:
    # better, but by less than the 10 % margin a model needs to join
    a = (1.05**2 - 1.0 + 1.0) / 2
    targets = cv_targets(w, a)
    targets[..., 1] += np.float32(np.sqrt(1.05**2 - a**2))
    truth.value = (w, targets)
    v = gate.judge(model)
    assert v.fde_m[MODEL] == pytest.approx(1.0, abs=1e-3)
    assert v.fde_m[fallback.CV] == pytest.approx(1.05, abs=1e-3)
    assert (v.predictor, v.reason) == (fallback.CTRV, "physics_better")


def test_best_physics_is_chosen_from_the_truth_not_assumed(model) -> None:
    truth = Truth()
    gate, _ = make_gate(truth)
    w = windows(120, yaw_rate=0.3)  # a yaw-rate sensor that lies: CTRV curves, the car does not
    truth.value = (w, cv_targets(w))
    v = gate.judge(None)
    assert v.predictor == fallback.CV and v.physics == fallback.CV
    assert v.fde_m[fallback.CTRV] > 1.0 > v.fde_m[fallback.CV]
    v = gate.judge(model)  # CV moved 1 m loses to CV: CV answers, not the CTRV fallback
    assert (v.predictor, v.reason) == (fallback.CV, "physics_better")


@pytest.mark.parametrize(("yaw_rate", "switches"), [(0.003, False), (0.05, True)])
def test_the_physics_answering_changes_only_for_a_clearly_better_one(yaw_rate, switches) -> None:
    truth = Truth()
    gate, _ = make_gate(truth)
    w = windows(120, yaw_rate=yaw_rate)  # CTRV curves by what the sensor claims; truth is straight
    truth.value = (w, cv_targets(w, 2.0))  # and 2 m east of CV: both physics are off
    v = gate.judge(None)
    ratio = v.fde_m[fallback.CTRV] / v.fde_m[fallback.CV] if v.fde_m[fallback.CV] else np.inf
    assert (ratio > 1.15) == switches
    assert v.physics == (fallback.CV if switches else fallback.CTRV)


def test_too_little_truth_never_changes_the_physics_answering(model) -> None:
    truth = Truth()
    gate, _ = make_gate(truth)
    w = windows(60, yaw_rate=0.3)  # CV is far better, but 60 windows are not yet evidence
    truth.value = (w, cv_targets(w))
    assert gate.judge(None).physics == fallback.CTRV
    w = windows(120, yaw_rate=0.3)
    truth.value = (w, cv_targets(w))
    assert gate.judge(None).physics == fallback.CV


def test_an_answering_model_leaves_when_it_loses_the_newest_stretch(model) -> None:
    w = windows(110)
    targets = cv_targets(w, 1.0)  # the model is right on the older 80 windows...
    targets[80:] = cv_targets(w[80:])  # ...and 1 m off on the newest 30, where physics is exact

    class Split(Truth):
        def __call__(self, within_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            k = 30 if within_s <= 10 else 110
            w, t, p = super().__call__(within_s)
            return w[-k:], t[-k:], p[-k:]

    truth = Split()
    gate, _ = make_gate(truth)
    truth.value = (w[:80], targets[:80])
    assert gate.judge(model).predictor == MODEL
    truth.value = (w, targets)
    v = gate.judge(model)
    assert v.fde_m[MODEL] < v.fde_m[fallback.CV]  # still ahead over the 30 s window
    assert (v.predictor, v.reason) == (fallback.CTRV, "physics_better")


def test_the_model_is_judged_on_what_it_answered_before_the_truth_not_after(model) -> None:
    """A version that has trained on the recent windows fits them: that must not count."""
    w = windows(40)
    targets = cv_targets(w)  # physics is exact
    store_preds = cv_targets(w, 1.0)  # and the model had answered 1 m off
    gate = PredictorGate(
        GatePolicy(min_samples=20), lambda s: (w, targets, store_preds), lambda: H, ServeMetrics()
    )
    v = gate.judge(model)
    assert v.fde_m[MODEL] == pytest.approx(1.0, abs=1e-3) and v.predictor != MODEL
    unscored = np.full_like(targets, np.nan)  # nothing answered by a model yet: unproven
    gate = PredictorGate(
        GatePolicy(min_samples=20), lambda s: (w, targets, unscored), lambda: H, ServeMetrics()
    )
    assert gate.judge(model).reason == "unproven"


def test_history_keeps_the_answer_given_before_the_truth() -> None:
    from inference.history import HistoryStore
    from schemas.sensor import SensorFrame

    store = HistoryStore(DEFAULT_SPEC, truth_every=1)
    for i in range(15):
        store.add_frame(SensorFrame("v", i, i * 10**8, float(i), 0.0, 10.0, 0.0, 0.0, 0.0), 0)
    assert store.score_awaiting(lambda x: np.full((len(x), 4, 2), 7.0, np.float32)) == 6
    for i in range(15, 60):
        store.add_frame(SensorFrame("v", i, i * 10**8, float(i), 0.0, 10.0, 0.0, 0.0, 0.0), 0)
    windows, _, preds = store.scored_truth()
    assert len(windows) > 6 and (preds[:6] == 7.0).all() and np.isnan(preds[6:]).all()
