"""JSON layout of a prediction (schema ``prediction+json/1``): for standard Kafka tooling.

One compact UTF-8 JSON object per record, members in :data:`FIELDS` order, floats in their
shortest round-trip form, non-finite floats as ``null`` (JSON has no NaN). Readers accept
any member order and whitespace and ignore unknown members (docs/WIRE.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

from schemas.errors import CodecError
from schemas.prediction import SOURCES, CachedParts, Prediction, encode_with

FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Prediction))
"""Members of the object, in the order the encoder writes them."""
_INTS = ("seq", "t_event_ns", "model_version")
_STAMPS = ("t_produce_ns", "t_consumed_ns", "t_infer_start_ns", "t_infer_end_ns", "t_published_ns")
_LISTS = ("horizons_s", "pred_x", "pred_y")
_STRINGS = ("vehicle_id", "model_name", "reason")
_INT64 = 2**63


def _text(s: str) -> str:
    try:
        raw = s.encode()
    except UnicodeEncodeError as exc:
        raise CodecError("string", f"not encodable as UTF-8: {exc}") from exc
    if len(raw) > 255:
        raise CodecError("string", f"longer than 255 bytes: {s[:32]!r}...")
    return json.dumps(s, ensure_ascii=False)


def _number(v: float) -> str:
    v = float(v)
    return float.__repr__(v) if math.isfinite(v) else "null"


class JsonPredictionEncoder(CachedParts[str]):
    """Writes the JSON layout from plain values; caches the strings that repeat per batch."""

    def _vehicle_part(self, vehicle_id: str) -> str:
        return _text(vehicle_id)

    def _middle_part(self, name: str, source: str, reason: str) -> str:
        """The model_name, source and reason members."""
        return f'"model_name":{_text(name)},"source":"{source}","reason":{_text(reason)}'

    def encode(
        self,
        vehicle_id: str,
        seq: int,
        t_event_ns: int,
        model_version: int,
        middle: str,
        stamps: tuple[int, int, int, int, int],
        horizons: Sequence[float],
        xs: Sequence[float],
        ys: Sequence[float],
    ) -> bytes:
        """One value; ``middle`` from :meth:`middle`."""
        if not 1 <= len(horizons) == len(xs) == len(ys) <= 255:
            raise CodecError("horizons_s", "need 1..255 horizons, pred_x and pred_y alike")
        a, b, c, d, e = (int(s) for s in stamps)
        return (
            f'{{"vehicle_id":{self.vehicle(vehicle_id)},"seq":{int(seq)},'
            f'"t_event_ns":{int(t_event_ns)},'
            f'"horizons_s":[{",".join(map(_number, horizons))}],'
            f'"pred_x":[{",".join(map(_number, xs))}],'
            f'"pred_y":[{",".join(map(_number, ys))}],'
            f'"model_version":{int(model_version)},{middle},'
            f'"t_produce_ns":{a},"t_consumed_ns":{b},"t_infer_start_ns":{c},'
            f'"t_infer_end_ns":{d},"t_published_ns":{e}}}'
        ).encode()


_ENCODER = JsonPredictionEncoder()


def encode_prediction_json(p: Prediction) -> bytes:
    return encode_with(_ENCODER, p)


def decode_prediction_json(value: bytes) -> Prediction:
    """Read the JSON layout; CodecError on anything but a valid v1 object."""
    try:
        obj = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CodecError("prediction", f"value is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise CodecError("prediction", "value must be a JSON object")
    fields: dict[str, Any] = {}
    for name in FIELDS:
        if name not in obj:
            raise CodecError(name, "member missing from JSON prediction")
        fields[name] = _member(name, obj[name])
    if not len(fields["horizons_s"]) == len(fields["pred_x"]) == len(fields["pred_y"]):
        raise CodecError("horizons_s", "horizons_s, pred_x and pred_y differ in length")
    return Prediction(**fields)


def _member(name: str, v: object) -> Any:
    if name in _INTS or name in _STAMPS:
        if type(v) is not int or not -_INT64 <= v < _INT64:
            raise CodecError(name, f"must be a 64-bit integer, got {str(v)[:32]!r}")
        return v
    if name in _STRINGS:
        if not isinstance(v, str) or len(v.encode("utf-8", "surrogatepass")) > 255:
            raise CodecError(name, "must be a string of at most 255 UTF-8 bytes")
        return v
    if name == "source":
        if v not in SOURCES:
            raise CodecError(name, f"must be one of {SOURCES}, got {str(v)[:32]!r}")
        return v
    if not isinstance(v, list) or not 1 <= len(v) <= 255:
        raise CodecError(name, "must be a list of 1..255 numbers")
    out = []
    for x in v:
        if x is None:
            out.append(math.nan)
        elif type(x) is float or (type(x) is int and abs(x) < 2**1023):
            out.append(float(x))
        else:
            raise CodecError(name, f"must hold numbers or null, got {str(x)[:32]!r}")
    return tuple(out)
