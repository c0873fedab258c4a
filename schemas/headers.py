"""Kafka header helpers: schema tags and nanosecond timing stamps.

Headers are ``list[tuple[str, bytes | None]]`` as confluent-kafka returns them: a header's
value may be null. Every reader here is total: whatever a producer put there (null or
huge values, duplicate keys, values of the wrong size, stamps from a broken clock) is
either an answer or a CodecError, which the services turn into a dead letter. Stamps are
8-byte big-endian signed integers so they cost no parsing and sort as bytes.
"""

from __future__ import annotations

import functools
import struct
import time
from collections.abc import Iterable

from schemas.errors import CodecError, SchemaVersionError

Headers = list[tuple[str, bytes | None]]
HeaderItems = Iterable[tuple[str, bytes | None]] | None

SCHEMA = "ds-schema"
T_PRODUCE_NS = "ds-t-produce-ns"
UNREADABLE = "ds-unreadable-headers"
"""Put in place of a record's headers by the consumer when the client could not read
them (a key that is not UTF-8); its value says why. check_schema rejects such a record."""

MAX_FUTURE_NS = 24 * 3600 * 10**9
"""A stamp later than now + this is a broken clock, not a time (and would overflow the
int64 latency arithmetic downstream)."""

_STAMP = struct.Struct(">q")
_latest_ok = 0
"""now + MAX_FUTURE_NS as of the last refresh (read_stamp avoids a clock read per record)."""
_SHOWN = 64
"""Characters of a bad header value quoted in an error message."""


def now_ns() -> int:
    """Wall-clock nanoseconds; every stamp in drivestream uses this clock."""
    return time.time_ns()


@functools.cache
def schema_tag(name: str, version: int) -> bytes:
    return f"{name}/{version}".encode()


def _lookup(headers: HeaderItems, key: str) -> tuple[int, bytes | None]:
    """(how often ``key`` appears, its value); CodecError if the appearances disagree:
    which one the producer meant is unknowable, so the record is not guessed at."""
    n, found = 0, None
    for item in headers or ():
        if type(item) is tuple and len(item) == 2 and item[0] == key:
            value = item[1]
            if value is not None and type(value) is not bytes:
                value = _as_bytes(value)
            if n and value != found:
                raise CodecError(key, "header appears several times with different values")
            n, found = n + 1, value
    return n, found


def _as_bytes(value: object) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    raise CodecError("headers", f"a header value must be bytes, got {type(value).__name__}")


def get(headers: HeaderItems, key: str) -> bytes | None:
    """Value of the header named ``key``; None if absent or null (CodecError if it appears
    more than once with different values)."""
    return _lookup(headers, key)[1]


def stamp(value_ns: int) -> bytes:
    return _STAMP.pack(value_ns)


def read_stamp(headers: HeaderItems, key: str) -> int | None:
    """The stamp ``key`` in ns, None if absent; CodecError if null, malformed or not a
    plausible wall-clock time (negative, or more than a day ahead of this clock)."""
    global _latest_ok
    n, raw = _lookup(headers, key)
    if raw is None:
        if n:
            raise CodecError(key, "header has a null value; expected an 8-byte stamp")
        return None
    if len(raw) != _STAMP.size:
        raise CodecError(key, f"stamp must be {_STAMP.size} bytes, got {len(raw)}")
    (value,) = _STAMP.unpack(raw)
    if value > _latest_ok:  # the cached bound only lags the clock: refresh, then judge
        _latest_ok = now_ns() + MAX_FUTURE_NS
    if not 0 <= value <= _latest_ok:
        raise CodecError(
            key,
            f"stamp {value} ns is not a plausible time (0 .. now + 1 day): check the "
            "producer's clock",
        )
    return int(value)


def shown(raw: bytes) -> str:
    """A header value for an error message: decoded leniently and cut short."""
    text = raw.decode(errors="replace")
    return text if len(text) <= _SHOWN else text[:_SHOWN] + f"... ({len(raw)} bytes)"


def check_schema(headers: HeaderItems, name: str, version: int) -> None:
    """Raise SchemaVersionError unless the headers tag the record as ``name/version``."""
    for item in headers or ():
        if type(item) is tuple and item and item[0] == UNREADABLE:
            why = item[1] if len(item) == 2 and isinstance(item[1], bytes) else b""
            raise CodecError(
                "headers", f"could not be read ({shown(why)}): header keys must be UTF-8"
            )
    expected = schema_tag(name, version)
    n, found = _lookup(headers, SCHEMA)
    if found is None:
        state = "null" if n else "missing"
        raise CodecError(SCHEMA, f"header {state}; expected {expected.decode()}")
    if found != expected:
        raise SchemaVersionError(shown(found), expected.decode())
