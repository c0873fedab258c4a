"""Kafka header helpers: schema tags and nanosecond timing stamps.

Headers are kafka-python's ``list[tuple[str, bytes]]``. Stamps are 8-byte big-endian
signed integers so they cost no parsing and sort as bytes.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable

from schemas.errors import CodecError, SchemaVersionError

Headers = list[tuple[str, bytes]]

SCHEMA = "ds-schema"
T_PRODUCE_NS = "ds-t-produce-ns"

_STAMP = struct.Struct(">q")


def now_ns() -> int:
    """Wall-clock nanoseconds; every stamp in drivestream uses this clock."""
    return time.time_ns()


def schema_tag(name: str, version: int) -> bytes:
    return f"{name}/{version}".encode()


def get(headers: Iterable[tuple[str, bytes]] | None, key: str) -> bytes | None:
    """Value of the last header named ``key``, or None."""
    found = None
    for k, v in headers or ():
        if k == key:
            found = v
    return found


def stamp(value_ns: int) -> bytes:
    return _STAMP.pack(value_ns)


def read_stamp(headers: Iterable[tuple[str, bytes]] | None, key: str) -> int | None:
    raw = get(headers, key)
    if raw is None:
        return None
    if len(raw) != _STAMP.size:
        raise CodecError(key, f"stamp must be {_STAMP.size} bytes, got {len(raw)}")
    return _STAMP.unpack(raw)[0]


def check_schema(headers: Iterable[tuple[str, bytes]] | None, name: str, version: int) -> None:
    """Raise SchemaVersionError unless the headers tag the record as ``name/version``."""
    expected = schema_tag(name, version)
    found = get(headers, SCHEMA)
    if found is None:
        raise CodecError(SCHEMA, f"header missing; expected {expected.decode()}")
    if found != expected:
        raise SchemaVersionError(found.decode(errors="replace"), expected.decode())
