"""Model envelope: one published model version with its lineage, metrics and ONNX bytes."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from schemas import headers
from schemas.binary import pack_meta_blob, unpack_meta_blob
from schemas.errors import CodecError, ValidationError
from schemas.headers import Headers
from schemas.model_spec import InputSpec

SCHEMA_NAME = "model_envelope"
SCHEMA_VERSION = 1


def digest(onnx_bytes: bytes) -> str:
    """Content digest carried in the envelope and checked before a model is loaded."""
    return "sha256:" + hashlib.sha256(onnx_bytes).hexdigest()


@dataclass(frozen=True, kw_only=True)
class ModelEnvelope:
    """A model version as published on the ``models`` topic (keyed by ``name``)."""

    name: str
    version: int
    parent_version: int
    created_ns: int
    trained_until_ns: int
    """Label time (t_event_ns of the newest ground-truth frame) of the newest sample used."""
    steps: int
    samples: int
    input_spec: InputSpec
    onnx: bytes = field(repr=False)
    digest: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    signer: str = ""
    """Key id (:func:`schemas.signing.key_id`) of the key that signed it; '' = unsigned."""
    signature: str = field(default="", repr=False)
    """Base64 Ed25519 signature of every other field (:mod:`schemas.signing`)."""

    def __post_init__(self) -> None:
        if not self.digest:
            object.__setattr__(self, "digest", digest(self.onnx))

    def verify(self) -> None:
        """Raise ValidationError if the ONNX bytes do not match the digest."""
        if digest(self.onnx) != self.digest:
            raise ValidationError("digest", f"ONNX bytes do not match {self.digest}")


def encode_envelope(env: ModelEnvelope) -> bytes:
    meta: dict[str, Any] = asdict(env)
    meta.pop("onnx")
    meta["input_spec"] = env.input_spec.to_json()
    meta["metrics"] = {str(k): float(v) for k, v in env.metrics.items()}
    return pack_meta_blob(meta, env.onnx)


def decode_envelope(value: bytes) -> ModelEnvelope:
    """Decode without verifying the digest (the receiver decides when to verify)."""
    meta, blob = unpack_meta_blob(value, "model_envelope")
    try:
        return ModelEnvelope(
            name=str(meta["name"]),
            version=int(meta["version"]),
            parent_version=int(meta["parent_version"]),
            created_ns=int(meta["created_ns"]),
            trained_until_ns=int(meta["trained_until_ns"]),
            steps=int(meta["steps"]),
            samples=int(meta["samples"]),
            input_spec=InputSpec.from_json(meta["input_spec"]),
            onnx=blob,
            digest=str(meta["digest"]),
            metrics={str(k): float(v) for k, v in meta.get("metrics", {}).items()},
            signer=str(meta.get("signer", "")),
            signature=str(meta.get("signature", "")),
        )
    except KeyError as exc:
        raise CodecError(str(exc.args[0]), "field missing from model envelope") from exc
    except (TypeError, ValueError, AttributeError) as exc:
        raise CodecError("model_envelope", f"bad field: {exc}") from exc


def envelope_headers() -> Headers:
    return [(headers.SCHEMA, headers.schema_tag(SCHEMA_NAME, SCHEMA_VERSION))]


def check_envelope_headers(hdrs: Headers | None) -> None:
    headers.check_schema(hdrs, SCHEMA_NAME, SCHEMA_VERSION)
