"""Any record of any drivestream topic as one JSON object: what ``drivestream tail`` prints.

The record kind comes from the ``ds-schema`` header, else from the topic name (after the
prefix). Rendering is total: bytes that are not a record this build reads are shown as
``{"base64": ...}`` with an ``error``, never an exception. Layouts: docs/WIRE.md.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any

from schemas import deadletter, envelope, headers, prediction, sensor, topics
from schemas.errors import CodecError, SchemaVersionError, ValidationError
from schemas.kafka import Message
from trainer import wire

Rendered = dict[str, Any]

_BY_TOPIC = {
    topics.SENSORS: sensor.SCHEMA_NAME,
    topics.PREDICTIONS: prediction.SCHEMA_NAME,
    topics.MODELS: envelope.SCHEMA_NAME,
    topics.DEADLETTER: deadletter.SCHEMA_NAME,
    topics.PS_UPDATES: wire.DELTA_SCHEMA[0],
    topics.PS_WEIGHTS: wire.WEIGHTS_SCHEMA[0],
}
"""Schema name of each topic's records, for records that carry no ``ds-schema`` header."""


def raw(data: bytes | None) -> Any:
    """Bytes for JSON: text if they are UTF-8 without control characters, else base64."""
    if data is None:
        return None
    try:
        text = data.decode()
    except UnicodeDecodeError:
        text = None
    if text is not None and text.isprintable():
        return text
    return {"base64": base64.b64encode(data).decode()}


def header_value(key: str, value: bytes | None) -> Any:
    """A stamp header (``ds-t-*-ns``, 8 bytes) as its integer, anything else as :func:`raw`."""
    if value is not None and key.startswith("ds-t-") and key.endswith("-ns") and len(value) == 8:
        return int.from_bytes(value, "big", signed=True)
    return raw(value)


def plain(obj: Any) -> Any:
    """Dataclasses, tuples and floats as JSON-ready values (non-finite floats -> null)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, bytes):
        return raw(obj)
    return obj


def _sensor(value: bytes) -> Rendered:
    frames = sensor.decode_frames(value, validate=False)
    out: Rendered = {"frames": [plain(f) for f in frames]}
    for f in frames:
        try:
            sensor.validate_frame(f)
        except ValidationError as exc:  # shown as it is, with what a service would say
            out["invalid"] = str(exc)
            break
    return out


def _model(value: bytes) -> Rendered:
    env = envelope.decode_envelope(value)
    out: Rendered = {
        f.name: plain(getattr(env, f.name)) for f in dataclasses.fields(env) if f.name != "onnx"
    }
    out["input_spec"] = json.loads(env.input_spec.to_json())
    out["onnx"] = {"size": len(env.onnx), "matches_digest": envelope.digest(env.onnx) == env.digest}
    return out


def _dead_letter(value: bytes) -> Rendered:
    d = deadletter.decode_dead_letter(value)
    out: Rendered = plain(d)
    out["raw_value"] = {"base64": base64.b64encode(d.raw_value).decode()}
    out["raw_headers"] = [[k, header_value(k, v)] for k, v in d.raw_headers]
    return out


def _tensors(meta: dict[str, Any], tensors: wire.Tensors) -> Rendered:
    out = {k: plain(v) for k, v in meta.items() if k not in ("names", "shapes")}
    out["tensors"] = {name: list(t.shape) for name, t in tensors.items()}
    return out


def _ps(what: str) -> Callable[[bytes], Rendered]:
    def decode(value: bytes) -> Rendered:
        return _tensors(*wire.unpack_tensors(value, what))

    return decode


DECODERS: dict[tuple[str, int], Callable[[bytes], Rendered]] = {
    (sensor.SCHEMA_NAME, sensor.SCHEMA_VERSION): _sensor,
    (prediction.SCHEMA_NAME, 1): lambda v: plain(prediction.decode_prediction(v, "binary")),
    (prediction.JSON_SCHEMA_NAME, 1): lambda v: plain(prediction.decode_prediction(v, "json")),
    (envelope.SCHEMA_NAME, envelope.SCHEMA_VERSION): _model,
    (deadletter.SCHEMA_NAME, 1): _dead_letter,
    (deadletter.SCHEMA_NAME, deadletter.SCHEMA_VERSION): _dead_letter,
    (wire.DELTA_SCHEMA[0], wire.DELTA_SCHEMA[1]): _ps("ps_delta"),
    (wire.WEIGHTS_SCHEMA[0], wire.WEIGHTS_SCHEMA[1]): _ps("ps_weights"),
}
"""(schema name, version) -> decoder of its value into JSON-ready data."""

_LATEST = {name: max(v for n, v in DECODERS if n == name) for name, _ in DECODERS}


def schema_of(msg: Message, prefix: str) -> tuple[str, int]:
    """The record's (schema, version): its header's, else its topic's current one."""
    tag = headers.get(msg.headers, headers.SCHEMA)
    if tag is not None:
        name, sep, version = tag.decode("utf-8", "replace").rpartition("/")
        if not sep or not version.isdigit():
            raise CodecError(headers.SCHEMA, f"not a name/version tag: {headers.shown(tag)}")
        if (name, int(version)) not in DECODERS:
            raise SchemaVersionError(headers.shown(tag), "a drivestream schema (docs/WIRE.md)")
        return name, int(version)
    short = msg.topic[len(prefix) :] if msg.topic.startswith(prefix) else msg.topic
    name = _BY_TOPIC.get(short) or next(
        (s for t, s in _BY_TOPIC.items() if msg.topic.endswith(t)), ""
    )
    if not name:
        raise CodecError(headers.SCHEMA, "no schema header and not a drivestream topic name")
    return name, _LATEST[name]


def render(msg: Message, prefix: str = "") -> Rendered:
    """One consumed record as JSON-ready data; never raises on what the record holds."""
    out: Rendered = {
        "topic": msg.topic,
        "partition": msg.partition,
        "offset": msg.offset,
        "timestamp_ms": msg.timestamp_ms,
        "key": raw(msg.key),
        "headers": [[k, header_value(k, v)] for k, v in msg.headers],
        "schema": None,
    }
    if not msg.value:
        out["value"] = None  # a tombstone (compacted topics) or an empty record
        return out
    try:
        name, version = schema_of(msg, prefix)
        try:
            out["value"] = plain(DECODERS[(name, version)](msg.value))
        except CodecError:
            if (name, headers.get(msg.headers, headers.SCHEMA)) != (prediction.SCHEMA_NAME, None):
                raise
            name = prediction.JSON_SCHEMA_NAME  # no header on predictions: either layout
            out["value"] = plain(DECODERS[(name, version)](msg.value))
        out["schema"] = f"{name}/{version}"
    except Exception as exc:  # junk of any kind is shown, never fatal
        out["value"] = {"base64": base64.b64encode(msg.value).decode()}
        out["error"] = f"{type(exc).__name__}: {exc}"[:500]
    return out


def to_line(rendered: Rendered) -> str:
    """One JSON line (ASCII, so any terminal encoding shows it)."""
    return json.dumps(rendered, allow_nan=False, separators=(",", ":"))
