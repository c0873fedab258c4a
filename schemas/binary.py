"""Little-endian primitives shared by the record codecs (strings, optional floats, blobs)."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

from schemas.errors import CodecError

_U8 = struct.Struct("<B")
_U32 = struct.Struct("<I")


class Reader:
    """Sequential reader over a bytes value that raises CodecError on truncation."""

    __slots__ = ("_buf", "_pos", "_what")

    def __init__(self, buf: bytes, what: str) -> None:
        self._buf = memoryview(buf)
        self._pos = 0
        self._what = what

    def unpack(self, fmt: struct.Struct) -> tuple[Any, ...]:
        end = self._pos + fmt.size
        if end > len(self._buf):
            raise CodecError(self._what, f"truncated value ({len(self._buf)} bytes)")
        out = fmt.unpack_from(self._buf, self._pos)
        self._pos = end
        return out

    def string(self) -> str:
        (n,) = self.unpack(_U8)
        try:
            return self.raw(n).decode()
        except UnicodeDecodeError as exc:
            raise CodecError(self._what, f"string is not UTF-8: {exc}") from exc

    def raw(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._buf):
            raise CodecError(self._what, f"truncated value ({len(self._buf)} bytes)")
        out = bytes(self._buf[self._pos : end])
        self._pos = end
        return out

    def done(self) -> None:
        if self._pos != len(self._buf):
            raise CodecError(self._what, f"{len(self._buf) - self._pos} trailing bytes")


def pack_string(s: str) -> bytes:
    raw = s.encode()
    if len(raw) > 255:
        raise CodecError("string", f"longer than 255 bytes: {s[:32]!r}...")
    return _U8.pack(len(raw)) + raw


def opt_float(v: float | None) -> float:
    return math.nan if v is None else v


def from_opt_float(v: float) -> float | None:
    return None if math.isnan(v) else v


def pack_meta_blob(meta: dict[str, Any], blob: bytes) -> bytes:
    """``u32 len | JSON meta | blob``: for records that are mostly one opaque payload."""
    head = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    return _U32.pack(len(head)) + head + blob


def unpack_meta_blob(value: bytes, what: str) -> tuple[dict[str, Any], bytes]:
    if len(value) < _U32.size:
        raise CodecError(what, "value shorter than its length prefix")
    (n,) = _U32.unpack_from(value, 0)
    if _U32.size + n > len(value):
        raise CodecError(what, f"metadata length {n} exceeds value size {len(value)}")
    try:
        meta = json.loads(value[_U32.size : _U32.size + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CodecError(what, f"metadata is not JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise CodecError(what, "metadata must be a JSON object")
    return meta, value[_U32.size + n :]
