"""Codec of the trainer <-> parameter-server channel (ps-updates / ps-weights topics).

Value = ``u32 len | JSON header | raw little-endian float32 tensors`` (schemas.binary's
meta+blob layout). Raw floats rather than ``torch.save``: no pickle is ever loaded from the
wire, and encoding is a memcpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from schemas import headers
from schemas.binary import pack_meta_blob, unpack_meta_blob
from schemas.errors import CodecError
from schemas.headers import Headers

DELTA_SCHEMA = ("ps_delta", 1)
WEIGHTS_SCHEMA = ("ps_weights", 1)

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True, kw_only=True)
class Delta:
    """A trainer group's change since ``base_version``, with what it trained on."""

    group: str
    base_version: int
    tensors: Tensors = field(repr=False)
    steps: int = 0
    samples: int = 0
    trained_until_ns: int = 0
    trained_until_produce_ns: int = 0
    sensor_offsets: dict[int, int] = field(default_factory=dict)
    """Next sensors offset per partition the group has consumed (for the server checkpoint)."""
    metrics: dict[str, float] = field(default_factory=dict)
    anchor_id: str = ""
    """Names the trainer state the delta is measured from. A retried push (the first one
    may still land late) carries the same id and the whole change since that anchor: the
    server applies only what it has not applied from it yet. '' in older records."""


@dataclass(frozen=True, kw_only=True)
class Weights:
    """The server's master weights at ``version``."""

    version: int
    tensors: Tensors = field(repr=False)
    created_ns: int = 0
    updates_offset: int = 0
    """Next ps-updates offset the server will apply: every delta before it (accepted or
    rejected) has been processed into these weights. Trainers hold back their next push
    until this passes their previous one."""


def pack_tensors(meta: dict[str, Any], tensors: Tensors) -> bytes:
    names = sorted(tensors)
    meta = {**meta, "names": names, "shapes": [list(tensors[k].shape) for k in names]}
    blob = b"".join(np.ascontiguousarray(tensors[k], dtype="<f4").tobytes() for k in names)
    return pack_meta_blob(meta, blob)


def unpack_tensors(value: bytes, what: str) -> tuple[dict[str, Any], Tensors]:
    meta, blob = unpack_meta_blob(value, what)
    try:
        names, shapes = meta["names"], meta["shapes"]
        sizes = [int(np.prod(s)) for s in shapes]
        if sum(sizes) * 4 != len(blob):
            raise CodecError(what, f"tensor bytes {len(blob)} != {sum(sizes) * 4} declared")
        flat = np.frombuffer(blob, dtype="<f4")
        out: Tensors = {}
        pos = 0
        for name, shape, n in zip(names, shapes, sizes, strict=True):
            out[str(name)] = flat[pos : pos + n].reshape(shape).astype(np.float32)
            pos += n
    except (KeyError, TypeError, ValueError) as exc:
        raise CodecError(what, f"bad tensor header: {exc}") from exc
    return meta, out


def encode_delta(d: Delta) -> bytes:
    meta = {
        "group": d.group,
        "base_version": d.base_version,
        "steps": d.steps,
        "samples": d.samples,
        "trained_until_ns": d.trained_until_ns,
        "trained_until_produce_ns": d.trained_until_produce_ns,
        "sensor_offsets": {str(p): o for p, o in d.sensor_offsets.items()},
        "metrics": d.metrics,
        **({"anchor_id": d.anchor_id} if d.anchor_id else {}),
    }
    return pack_tensors(meta, d.tensors)


def decode_delta(value: bytes) -> Delta:
    meta, tensors = unpack_tensors(value, "ps_delta")
    try:
        return Delta(
            group=str(meta["group"]),
            base_version=int(meta["base_version"]),
            tensors=tensors,
            steps=int(meta["steps"]),
            samples=int(meta["samples"]),
            trained_until_ns=int(meta["trained_until_ns"]),
            trained_until_produce_ns=int(meta["trained_until_produce_ns"]),
            sensor_offsets={int(p): int(o) for p, o in meta["sensor_offsets"].items()},
            metrics={str(k): float(v) for k, v in meta["metrics"].items()},
            anchor_id=str(meta.get("anchor_id", "")),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CodecError("ps_delta", f"bad header: {exc}") from exc


def encode_weights(w: Weights) -> bytes:
    meta = {"version": w.version, "created_ns": w.created_ns, "updates_offset": w.updates_offset}
    return pack_tensors(meta, w.tensors)


def decode_weights(value: bytes) -> Weights:
    meta, tensors = unpack_tensors(value, "ps_weights")
    try:
        return Weights(
            version=int(meta["version"]),
            tensors=tensors,
            created_ns=int(meta["created_ns"]),
            updates_offset=int(meta.get("updates_offset", 0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CodecError("ps_weights", f"bad header: {exc}") from exc


def delta_headers() -> Headers:
    return [(headers.SCHEMA, headers.schema_tag(*DELTA_SCHEMA))]


def weights_headers() -> Headers:
    return [(headers.SCHEMA, headers.schema_tag(*WEIGHTS_SCHEMA))]


def check_delta_headers(hdrs: Headers | None) -> None:
    headers.check_schema(hdrs, *DELTA_SCHEMA)


def check_weights_headers(hdrs: Headers | None) -> None:
    headers.check_schema(hdrs, *WEIGHTS_SCHEMA)
