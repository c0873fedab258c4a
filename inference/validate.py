"""Checks a published model must pass before it may serve.

First who published it (:func:`check_trust`: an Ed25519 signature by a trusted key, see
:mod:`schemas.signing`); then, in :func:`validate`: digest, ONNX checker, session build,
input/output signature, finite outputs on a canary batch, accuracy on recent ground truth
against what it would replace (the serving model, else the best physics predictor), then
warm-up on every batch shape. Each failure raises ModelRejected with a short reason label.
Passing is not serving: the never-worse gate (:mod:`inference.gate`) still decides,
continuously, whether the model or physics answers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx

from inference.errors import ModelRejected
from inference.gate import physics_predictions
from inference.runtime import LoadedModel, build_session
from schemas.envelope import ModelEnvelope
from schemas.errors import ValidationError
from schemas.model_spec import FEATURES, INPUT_NAME, OUTPUT_NAME, InputSpec
from schemas.signing import BAD_SIGNATURE, SignatureError, TrustedKeys

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ValidationPolicy:
    """Thresholds of the accuracy gate and what the session is built for."""

    device: str = "auto"
    intra_op_threads: int = 1
    batch_shapes: tuple[int, ...] = (1,)
    tolerance: float = 0.1
    """Reject a model whose error is more than this fraction above its baseline's..."""
    slack_m: float = 0.05
    """...plus this many metres (GNSS noise: no model beats a zero-error baseline)."""
    min_truth_samples: int = 16
    yaw_eps: float = 1e-3


@dataclass(frozen=True, kw_only=True)
class TrustPolicy:
    """Whose envelopes serve accepts and how far ahead of its lineage a version may be."""

    keys: TrustedKeys = field(default_factory=TrustedKeys)
    allow_unsigned: bool = False
    """Also accept unsigned envelopes (and ones by unknown keys): for tests and hand-made
    models only; a bad signature by a trusted key is still refused."""
    max_version_jump: int = 10_000
    """Refuse version v when the newest trusted version seen is older than v - this."""


def check_trust(env: ModelEnvelope, trust: TrustPolicy) -> None:
    """Raise ModelRejected (``unsigned``, ``untrusted_key``, ``bad_signature``) unless a
    trusted key signed ``env`` or unsigned mode admits it."""
    try:
        trust.keys.verify(env)
    except SignatureError as exc:
        if trust.allow_unsigned and exc.label != BAD_SIGNATURE:
            return  # unsigned mode: a missing or unknown signature would protect nothing
        hint = (
            "; give serve the parameter server's public key (--trusted-key-files)"
            if exc.label != BAD_SIGNATURE
            else ""
        )
        raise ModelRejected(exc.label, exc.reason + hint) from exc


def fde(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean error at the longest horizon, metres (what the never-worse gate compares)."""
    return float(np.mean(np.linalg.norm(pred[:, -1].astype(np.float64) - target[:, -1], axis=-1)))


def canary_windows(spec: InputSpec, n: int = 8) -> np.ndarray:
    """Plausible windows (straight and turning vehicles) for the finite-output check."""
    t = np.arange(-(spec.history - 1), 1, dtype=np.float64) / spec.rate_hz
    out = np.zeros((n, spec.history, len(FEATURES)), np.float32)
    for i in range(n):
        v, w, h0 = 5.0 + 2.0 * i, (i - n / 2) * 0.05, i * 0.7 - 2.8
        heading = h0 + w * t
        out[i, :, 0] = t
        out[i, :, 1] = 100.0 + np.cumsum(v * np.cos(heading)) / spec.rate_hz
        out[i, :, 2] = -50.0 + np.cumsum(v * np.sin(heading)) / spec.rate_hz
        out[i, :, 3] = v
        out[i, :, 4] = np.arctan2(np.sin(heading), np.cos(heading))
        out[i, :, 5] = w
    return out


def _second(pair: tuple[str, float]) -> float:
    return pair[1]


def _dim_ok(dim: object, expected: int) -> bool:
    return not isinstance(dim, int) or dim == expected


def check_signature(model: LoadedModel) -> None:
    spec = model.spec
    ins, outs = model.session.get_inputs(), model.session.get_outputs()
    if [i.name for i in ins] != [INPUT_NAME]:
        raise ModelRejected("signature", f"inputs {[i.name for i in ins]}, need [{INPUT_NAME!r}]")
    if OUTPUT_NAME not in [o.name for o in outs]:
        raise ModelRejected("signature", f"outputs {[o.name for o in outs]} lack {OUTPUT_NAME!r}")
    out = next(o for o in outs if o.name == OUTPUT_NAME)
    for arg, want in ((ins[0], (spec.history, len(FEATURES))), (out, (len(spec.horizons_s), 2))):
        if arg.type != "tensor(float)":
            raise ModelRejected("signature", f"{arg.name} is {arg.type}, need tensor(float)")
        shape = list(arg.shape)
        if len(shape) != 3 or not all(_dim_ok(d, w) for d, w in zip(shape[1:], want, strict=True)):
            raise ModelRejected(
                "signature", f"{arg.name} shape {shape}, need [B, {want[0]}, {want[1]}]"
            )
        if isinstance(shape[0], int):
            raise ModelRejected(
                "signature", f"{arg.name} batch dim fixed at {shape[0]}; need dynamic"
            )


def _run(model: LoadedModel, windows: np.ndarray) -> np.ndarray:
    try:
        out = model.run(windows)
    except Exception as exc:  # ORT raises its own types; any failure here rejects the model
        raise ModelRejected("runtime", f"inference failed: {exc}") from exc
    want = (len(windows), len(model.spec.horizons_s), 2)
    if out.shape != want:
        raise ModelRejected("signature", f"output shape {out.shape}, need {want}")
    if not np.all(np.isfinite(out)):
        raise ModelRejected("non_finite", "model outputs NaN or inf on the canary batch")
    return out


def validate(
    env: ModelEnvelope,
    policy: ValidationPolicy,
    serving: LoadedModel | None,
    truth: tuple[np.ndarray, np.ndarray],
) -> LoadedModel:
    """Return a warmed model ready to swap in, or raise ModelRejected."""
    try:
        env.verify()
    except ValidationError as exc:
        raise ModelRejected("digest", str(exc)) from exc
    try:
        onnx.checker.check_model(onnx.load_model_from_string(env.onnx))
    except Exception as exc:  # protobuf DecodeError or onnx ValidationError
        raise ModelRejected("onnx_checker", f"{type(exc).__name__}: {exc}") from exc
    try:
        session, provider = build_session(env.onnx, policy.device, policy.intra_op_threads)
    except Exception as exc:
        raise ModelRejected("session", f"ONNX Runtime cannot load it: {exc}") from exc
    model = LoadedModel(envelope=env, session=session, provider=provider)
    check_signature(model)
    _run(model, canary_windows(env.input_spec))
    windows, targets = truth
    same_shape = windows.ndim == 3 and windows.shape[1] == env.input_spec.history
    same_horizons = serving is None or serving.spec.horizons_s == env.input_spec.horizons_s
    if len(windows) >= policy.min_truth_samples and same_shape and same_horizons:
        new_fde = fde(_run(model, windows), targets)
        if serving is not None and serving.spec.history == env.input_spec.history:
            base_name, base_fde = f"v{serving.version}", fde(serving.run(windows), targets)
        else:
            preds = physics_predictions(windows, env.input_spec.horizons_s, policy.yaw_eps)
            base_name, base_fde = min(((n, fde(p, targets)) for n, p in preds.items()), key=_second)
        limit = (1 + policy.tolerance) * base_fde + policy.slack_m
        if new_fde > limit:
            raise ModelRejected(
                "accuracy",
                f"FDE {new_fde:.3f} m on {len(windows)} recent windows > {limit:.3f} m "
                f"({base_name} {base_fde:.3f} m + {policy.tolerance:.0%} + {policy.slack_m} m)",
            )
        log.info("v%d FDE %.3f m vs %s %.3f m", env.version, new_fde, base_name, base_fde)
    else:
        log.info("v%d: %d ground-truth windows, accuracy gate skipped", env.version, len(windows))
    model.warm_up(policy.batch_shapes)
    return model
