"""Small ONNX models that meet (or deliberately break) the schemas.model_spec contract.

Built directly with torch so inference tests need no trainer. All take ``history``
``[B, T, 7]`` and return ``positions`` ``[B, K, 2]`` unless built to break that.
:func:`envelope` signs with :data:`TEST_KEY`, the key tests give serve to trust
(:data:`TEST_PUBLIC`, or :func:`trusting_test_key`), as the parameter server would.
"""

from __future__ import annotations

import io
import warnings

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from torch import nn

from schemas.envelope import ModelEnvelope
from schemas.headers import now_ns
from schemas.model_spec import DEFAULT_SPEC, INPUT_NAME, OUTPUT_NAME, InputSpec
from schemas.signing import TrustedKeys, public_text, sign_envelope

TEST_KEY = Ed25519PrivateKey.from_private_bytes(b"drivestream test signing key 32b")
"""A fixed key (tests only): stands in for the parameter server's."""
TEST_PUBLIC = public_text(TEST_KEY.public_key())
"""What ``ServeConfig(trusted_keys=...)`` takes to trust :data:`TEST_KEY`."""


def trusting_test_key(**kw):  # -> inference.validate.TrustPolicy (imported late: ORT is heavy)
    """A TrustPolicy trusting :data:`TEST_KEY` only."""
    from inference.validate import TrustPolicy

    return TrustPolicy(keys=TrustedKeys([TEST_KEY.public_key()]), **kw)


class ConstantVelocity(nn.Module):
    """Extrapolates the newest frame along its heading at its speed (plus ``offset_m``)."""

    def __init__(self, horizons_s: tuple[float, ...], offset_m: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("h", torch.tensor(horizons_s, dtype=torch.float32))
        self.offset_m = offset_m

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        last = history[:, -1, :]
        x, y, v, th = last[:, 1:2], last[:, 2:3], last[:, 3:4], last[:, 4:5]
        px = x + v * torch.cos(th) * self.h + self.offset_m
        py = y + v * torch.sin(th) * self.h
        return torch.stack([px, py], dim=-1)


class NaNOutput(ConstantVelocity):
    """Right signature, NaN positions."""

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        return super().forward(history) * torch.tensor(float("nan"))


class ThreeColumns(ConstantVelocity):
    """Wrong output signature: [B, K, 3]."""

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        out = super().forward(history)
        return torch.cat([out, out[..., :1]], dim=-1)


def export(
    module: nn.Module,
    spec: InputSpec = DEFAULT_SPEC,
    input_name: str = INPUT_NAME,
    output_name: str = OUTPUT_NAME,
) -> bytes:
    """ONNX bytes of ``module`` with a dynamic batch dimension."""
    torch.set_num_threads(1)
    buf = io.BytesIO()
    example = torch.zeros(2, spec.history, len(spec.features))
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation/tracer notes
        warnings.simplefilter("ignore")
        _export(module, example, buf, input_name, output_name)
    return buf.getvalue()


def _export(module: nn.Module, example, buf, input_name: str, output_name: str) -> None:
    torch.onnx.export(
        module.eval(),
        (example,),
        buf,
        input_names=[input_name],
        output_names=[output_name],
        dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


def cv_onnx(spec: InputSpec = DEFAULT_SPEC, offset_m: float = 0.0) -> bytes:
    return export(ConstantVelocity(spec.horizons_s, offset_m), spec)


def nan_onnx(spec: InputSpec = DEFAULT_SPEC) -> bytes:
    return export(NaNOutput(spec.horizons_s), spec)


def wrong_signature_onnx(spec: InputSpec = DEFAULT_SPEC) -> bytes:
    return export(ThreeColumns(spec.horizons_s), spec)


def wrong_input_name_onnx(spec: InputSpec = DEFAULT_SPEC) -> bytes:
    return export(ConstantVelocity(spec.horizons_s), spec, input_name="frames")


def envelope(
    onnx_bytes: bytes,
    version: int,
    name: str = "drivestream",
    spec: InputSpec = DEFAULT_SPEC,
    digest: str = "",
    key: Ed25519PrivateKey | None = TEST_KEY,
    parent_version: int | None = None,
) -> ModelEnvelope:
    """An envelope like the parameter server's, signed by ``key`` (None: unsigned)."""
    env = ModelEnvelope(
        name=name,
        version=version,
        parent_version=max(version - 1, 0) if parent_version is None else parent_version,
        created_ns=now_ns(),
        trained_until_ns=now_ns(),
        steps=version * 10,
        samples=version * 100,
        input_spec=spec,
        onnx=onnx_bytes,
        digest=digest,
    )
    return env if key is None else sign_envelope(env, key)
