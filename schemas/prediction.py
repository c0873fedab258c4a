"""Prediction: the answer to one sensor frame, with every stamp needed to split latency.

Stamps are wall-clock ns (``schemas.headers.now_ns``): t_produce_ns is copied from the
frame's header; t_consumed_ns when the inference service got the record; t_infer_start_ns /
t_infer_end_ns around the model (or fallback) call; t_published_ns right before producing.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, Literal, Protocol, TypeVar

import numpy as np
import pyarrow as pa

from schemas import headers
from schemas.binary import Reader, pack_string
from schemas.errors import CodecError, SchemaVersionError
from schemas.headers import HeaderItems, Headers

SCHEMA_NAME = "prediction"
SCHEMA_VERSION = 1

P = TypeVar("P", bytes, str)
"""A layout's cached part: bytes (binary) or str (JSON)."""

Source = Literal["model", "fallback"]
SOURCES: tuple[Source, ...] = ("model", "fallback")

Format = Literal["binary", "json"]
FORMATS: tuple[Format, ...] = ("binary", "json")
"""Value layouts of ``predictions``: the compact binary one (default) or JSON
(:mod:`schemas.prediction_json`); the ``ds-schema`` header says which."""
JSON_SCHEMA_NAME = "prediction+json"

ARROW_SCHEMA = pa.schema(
    [
        pa.field("vehicle_id", pa.string(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("t_event_ns", pa.int64(), nullable=False),
        pa.field("horizons_s", pa.list_(pa.float64()), nullable=False),
        pa.field("pred_x", pa.list_(pa.float64()), nullable=False),
        pa.field("pred_y", pa.list_(pa.float64()), nullable=False),
        pa.field("model_version", pa.int64(), nullable=False),
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("t_produce_ns", pa.int64(), nullable=False),
        pa.field("t_consumed_ns", pa.int64(), nullable=False),
        pa.field("t_infer_start_ns", pa.int64(), nullable=False),
        pa.field("t_infer_end_ns", pa.int64(), nullable=False),
        pa.field("t_published_ns", pa.int64(), nullable=False),
    ],
    metadata={b"drivestream.schema": f"{SCHEMA_NAME}/{SCHEMA_VERSION}".encode()},
)


@dataclass(frozen=True, slots=True)
class Prediction:
    """Predicted positions of one vehicle at each horizon after the frame ``seq``.

    ``model_version`` is -1 and ``model_name`` the fallback's name (``ctrv``/``cv``) when
    ``source`` is ``fallback``; ``reason`` says why the fallback answered ('' for model).
    """

    vehicle_id: str
    seq: int
    t_event_ns: int
    horizons_s: tuple[float, ...]
    pred_x: tuple[float, ...]
    pred_y: tuple[float, ...]
    model_version: int
    model_name: str
    source: Source
    reason: str
    t_produce_ns: int
    t_consumed_ns: int
    t_infer_start_ns: int
    t_infer_end_ns: int
    t_published_ns: int = 0

    def published(self, t_ns: int) -> Prediction:
        return replace(self, t_published_ns=t_ns)


# Value v1: str vehicle_id | q seq | q t_event_ns | q model_version | str model_name |
# B source index | str reason | 5q stamps | B K | K * (3d horizon x y)
HEAD = struct.Struct("<qqq")
_SRC = struct.Struct("<B")
_STAMPS = struct.Struct("<5q")
_K = struct.Struct("<B")
_POINT = struct.Struct("<3d")


class CachedParts(Generic[P]):
    """The parts of a value that repeat across records, each made once by the layout
    (:meth:`_vehicle_part`, :meth:`_middle_part`): vehicle ids, and the model name, source
    and reason block that is constant across one batch."""

    def __init__(self) -> None:
        self._vid: dict[str, P] = {}
        self._mid: dict[tuple[str, str, str], P] = {}

    def _vehicle_part(self, vehicle_id: str) -> P:
        raise NotImplementedError

    def _middle_part(self, name: str, source: str, reason: str) -> P:
        raise NotImplementedError

    def vehicle(self, vehicle_id: str) -> P:
        part = self._vid.get(vehicle_id)
        if part is None:
            if len(self._vid) > 1_000_000:  # vehicles come and go: keep the cache bounded
                self._vid.clear()
            part = self._vid[vehicle_id] = self._vehicle_part(vehicle_id)
        return part

    def middle(self, name: str, source: str, reason: str) -> P:
        """Model name, source and reason: constant across one batch."""
        key = (name, source, reason)
        part = self._mid.get(key)
        if part is None:
            if source not in SOURCES:
                raise CodecError("source", f"must be one of {SOURCES}, got {source!r}")
            part = self._mid[key] = self._middle_part(name, source, reason)
        return part

    def encode(
        self,
        vehicle_id: str,
        seq: int,
        t_event_ns: int,
        model_version: int,
        middle: P,
        stamps: tuple[int, int, int, int, int],
        horizons: Sequence[float],
        xs: Sequence[float],
        ys: Sequence[float],
    ) -> bytes:
        """One value; ``middle`` from :meth:`middle`."""
        raise NotImplementedError

    def encode_many(
        self,
        vehicle_ids: Sequence[str],
        ids: np.ndarray,
        model_version: int,
        middles: Sequence[P],
        stamps: np.ndarray,
        horizons: Sequence[float],
        points: np.ndarray,
    ) -> list[bytes]:
        """The values of a batch, what :meth:`encode` gives for each: ``ids [n, 2]`` (seq,
        t_event_ns) and ``stamps [n, 5]`` int64, ``points [n, K, 2]`` (x, y per horizon)."""
        seq_t, stamp_rows = ids.tolist(), stamps.tolist()
        xs, ys = points[:, :, 0].tolist(), points[:, :, 1].tolist()
        return [
            self.encode(vid, s, t, model_version, mid, tuple(st), horizons, x, y)  # type: ignore[arg-type]
            for vid, (s, t), mid, st, x, y in zip(
                vehicle_ids, seq_t, middles, stamp_rows, xs, ys, strict=True
            )
        ]


class PredictionEncoder(CachedParts[bytes]):
    """The v1 value layout, written field by field from plain values.

    It caches what repeats (vehicle ids, the model name/source/reason block, the struct
    of K points). Serve encodes whole batches with
    :class:`inference.batch_encoder.BatchPredictionEncoder`, to the same bytes.
    """

    def __init__(self) -> None:
        super().__init__()
        self._points: dict[int, struct.Struct] = {}

    def _vehicle_part(self, vehicle_id: str) -> bytes:
        return pack_string(vehicle_id)

    def _middle_part(self, name: str, source: str, reason: str) -> bytes:
        return pack_string(name) + bytes([SOURCES.index(source)]) + pack_string(reason)

    def points(self, k: int) -> struct.Struct:
        """Struct of the K-byte count and K (horizon, x, y) triples."""
        st = self._points.get(k)
        if st is None:
            if not 1 <= k <= 255:
                raise CodecError("horizons_s", f"need 1..255 horizons, got {k}")
            st = self._points[k] = struct.Struct("<B" + "3d" * k)
        return st

    def encode(
        self,
        vehicle_id: str,
        seq: int,
        t_event_ns: int,
        model_version: int,
        middle: bytes,
        stamps: tuple[int, int, int, int, int],
        horizons: Sequence[float],
        xs: Sequence[float],
        ys: Sequence[float],
    ) -> bytes:
        """One value; ``middle`` from :meth:`middle`."""
        points = self.points(len(horizons))
        if not len(horizons) == len(xs) == len(ys):
            raise CodecError("horizons_s", "horizons, pred_x and pred_y differ in length")
        flat: list[float] = [len(horizons)]
        for h, x, y in zip(horizons, xs, ys, strict=True):
            flat += (h, x, y)
        return b"".join(
            (
                self.vehicle(vehicle_id),
                HEAD.pack(seq, t_event_ns, model_version),
                middle,
                _STAMPS.pack(*stamps),
                points.pack(*flat),
            )
        )


class ValueEncoder(Protocol):
    """What serve publishes with: :class:`PredictionEncoder` (serve's batch subclass,
    :class:`inference.batch_encoder.BatchPredictionEncoder`) or the JSON layout's encoder
    (:mod:`schemas.prediction_json`); ``middle`` returns each one's own cached form."""

    def middle(self, name: str, source: str, reason: str) -> Any: ...

    def encode(
        self,
        vehicle_id: str,
        seq: int,
        t_event_ns: int,
        model_version: int,
        middle: Any,
        stamps: tuple[int, int, int, int, int],
        horizons: Sequence[float],
        xs: Sequence[float],
        ys: Sequence[float],
    ) -> bytes: ...

    def encode_many(
        self,
        vehicle_ids: Sequence[str],
        ids: np.ndarray,
        model_version: int,
        middles: Sequence[Any],
        stamps: np.ndarray,
        horizons: Sequence[float],
        points: np.ndarray,
    ) -> list[bytes]: ...


def encode_with(enc: ValueEncoder, p: Prediction) -> bytes:
    """``p`` as a value of ``enc``'s layout."""
    return enc.encode(
        p.vehicle_id,
        p.seq,
        p.t_event_ns,
        p.model_version,
        enc.middle(p.model_name, p.source, p.reason),
        (p.t_produce_ns, p.t_consumed_ns, p.t_infer_start_ns, p.t_infer_end_ns, p.t_published_ns),
        p.horizons_s,
        p.pred_x,
        p.pred_y,
    )


_ENCODER = PredictionEncoder()


def encode_prediction(p: Prediction) -> bytes:
    return encode_with(_ENCODER, p)


def decode_prediction(value: bytes, fmt: Format = "binary") -> Prediction:
    """Decode a value of layout ``fmt`` (what :func:`check_prediction_headers` returned)."""
    if fmt == "json":
        from schemas.prediction_json import decode_prediction_json  # it imports this module

        return decode_prediction_json(value)
    if fmt != "binary":
        raise CodecError("format", f"unknown prediction format {fmt!r}; one of {FORMATS}")
    r = Reader(value, "prediction")
    vid = r.string()
    seq, t_event, version = r.unpack(HEAD)
    name = r.string()
    (src,) = r.unpack(_SRC)
    if src >= len(SOURCES):
        raise CodecError("source", f"unknown source index {src}")
    reason = r.string()
    stamps = r.unpack(_STAMPS)
    (k,) = r.unpack(_K)
    points = [r.unpack(_POINT) for _ in range(k)]
    r.done()
    return Prediction(
        vid,
        seq,
        t_event,
        tuple(p[0] for p in points),
        tuple(p[1] for p in points),
        tuple(p[2] for p in points),
        version,
        name,
        SOURCES[src],
        reason,
        *stamps,
    )


def prediction_headers(fmt: Format = "binary") -> Headers:
    """``ds-schema: prediction/1`` (binary) or ``prediction+json/1`` (JSON)."""
    name = JSON_SCHEMA_NAME if fmt == "json" else SCHEMA_NAME
    return [(headers.SCHEMA, headers.schema_tag(name, SCHEMA_VERSION))]


def check_prediction_headers(hdrs: HeaderItems) -> Format:
    """The layout the headers declare; SchemaVersionError/CodecError if neither."""
    try:
        headers.check_schema(hdrs, SCHEMA_NAME, SCHEMA_VERSION)
        return "binary"
    except SchemaVersionError as binary_error:
        if headers.get(hdrs, headers.SCHEMA) != headers.schema_tag(JSON_SCHEMA_NAME, 1):
            raise SchemaVersionError(
                headers.shown(headers.get(hdrs, headers.SCHEMA) or b""),
                f"{SCHEMA_NAME}/{SCHEMA_VERSION} or {JSON_SCHEMA_NAME}/{SCHEMA_VERSION}",
            ) from binary_error
        return "json"


def predictions_to_table(preds: list[Prediction]) -> pa.Table:
    cols = {n: [getattr(p, n) for p in preds] for n in ARROW_SCHEMA.names}
    return pa.Table.from_pydict(cols, schema=ARROW_SCHEMA)
