"""Dead letter: an input record that could not be used, kept with the reason; always sendable.

Value (schema ``dead_letter/2``): ``u32 n | n bytes of JSON metadata | raw value``. The
metadata says where the record came from (``source_topic``, ``partition``, ``offset``), why
it was rejected (``reason``, ``exception``, ``stage``, ``connect_stage``) and holds its
headers as ``[key, hex | null]``. A record too large to keep whole is cut so that its dead
letter fits a size limit: raw value and headers are then prefixes, and ``original`` holds
the sizes and sha256 of what arrived (value, headers, key). v1 values still decode.

Headers of a dead-letter record: the schema tag, and Kafka Connect's error headers (as its
``DeadLetterQueueReporter`` writes them) so Connect tooling reads them:
``__connect.errors.topic``, ``.partition``, ``.offset`` (UTF-8 decimals), ``.connector.name``
(``drivestream-<stage>``), ``.stage`` (Connect's stage name), ``.exception.class.name`` and
``.exception.message``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from schemas import headers
from schemas.binary import pack_meta_blob, unpack_meta_blob
from schemas.errors import CodecError
from schemas.headers import HeaderItems, Headers
from schemas.kafka import ProduceError

SCHEMA_NAME = "dead_letter"
SCHEMA_VERSION = 2
"""2: exception, connect_stage, null header values, and ``original`` on cut records."""

MAX_BYTES = 256 * 1024
"""Default size limit of a dead-letter record: well below the broker's default 1 MiB
``max.message.bytes`` of the deadletter topic, and under librdkafka's 1 MB batch size."""
MIN_BYTES = 32 * 1024
"""Smallest limit that still fits a minimal dead letter with a long reason."""
MAX_REASON_CHARS = 1000
MAX_KEY_BYTES = 1024
"""A longer source key is not used as the dead letter's key (its size and sha256 are kept)."""
MAX_HEADER_KEY_CHARS = 256

HEADER_CONVERTER = "HEADER_CONVERTER"
VALUE_CONVERTER = "VALUE_CONVERTER"

CONNECT_PREFIX = "__connect.errors."
CONNECT_TOPIC = CONNECT_PREFIX + "topic"
CONNECT_PARTITION = CONNECT_PREFIX + "partition"
CONNECT_OFFSET = CONNECT_PREFIX + "offset"
CONNECT_CONNECTOR = CONNECT_PREFIX + "connector.name"
CONNECT_STAGE = CONNECT_PREFIX + "stage"
CONNECT_EXCEPTION = CONNECT_PREFIX + "exception.class.name"
CONNECT_MESSAGE = CONNECT_PREFIX + "exception.message"

_RECORD_OVERHEAD = 128
"""Bytes a record costs on the wire beyond key, value and headers (batch header, varints)."""
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")


@dataclass(frozen=True, slots=True)
class Original:
    """What arrived, for a dead letter that had to be cut: sizes in bytes and sha256 (hex).

    ``headers_size`` is the sum of key and value bytes; ``headers_sha256`` hashes, per
    header in order, ``u32 BE key length | key UTF-8 | i32 BE value length (-1 = null) |
    value``. A key over MAX_KEY_BYTES is not the dead letter's key: only these describe it.
    """

    value_size: int
    value_sha256: str
    headers_size: int
    headers_sha256: str
    headers_count: int
    key_size: int
    key_sha256: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """The raw bytes of a rejected record, where it came from, and why it was rejected."""

    source_topic: str
    partition: int
    offset: int
    reason: str
    stage: str
    """Which service rejected it (``inference``, ``trainer``, ``replay``...)."""
    raw_value: bytes
    raw_headers: tuple[tuple[str, bytes | None], ...] = ()
    exception: str = ""
    """Qualified class name of the error (``schemas.errors.CodecError``), if known."""
    connect_stage: str = VALUE_CONVERTER
    """Kafka Connect's name for what failed: HEADER_CONVERTER or VALUE_CONVERTER."""
    original: Original | None = None
    """Set when raw_value/raw_headers are prefixes of what arrived."""


class DeadLetterRecord(NamedTuple):
    """A dead letter as it is sent: value, key and headers."""

    value: bytes
    key: bytes | None
    headers: Headers
    cut: bool = False
    """Raw value, headers or key were left out to fit (``original`` describes them)."""

    @property
    def size(self) -> int:
        """Upper bound of the bytes the record takes in a produce request."""
        return _record_size(self.value, self.key, self.headers)


def of_record(
    topic: str,
    partition: int,
    offset: int,
    value: bytes | None,
    hdrs: HeaderItems,
    reason: str,
    stage: str,
    error: BaseException | None = None,
) -> DeadLetter:
    """The dead letter of a consumed record rejected with ``reason`` (and ``error``)."""
    return DeadLetter(
        source_topic=topic,
        partition=partition,
        offset=offset,
        reason=_clip(reason),
        stage=stage,
        raw_value=bytes(value or b""),
        raw_headers=_normal_headers(hdrs),
        exception="" if error is None else f"{type(error).__module__}.{type(error).__qualname__}",
        connect_stage=_connect_stage(error),
    )


def encode_dead_letter(d: DeadLetter) -> bytes:
    """The value of ``d`` as it is (see dead_letter_record for one that always fits)."""
    meta: dict[str, Any] = {
        "source_topic": d.source_topic,
        "partition": d.partition,
        "offset": d.offset,
        "reason": d.reason,
        "stage": d.stage,
        "exception": d.exception,
        "connect_stage": d.connect_stage,
        "headers": [[k, None if v is None else v.hex()] for k, v in d.raw_headers],
    }
    if d.original is not None:
        meta["original"] = dataclasses.asdict(d.original)
    return pack_meta_blob(meta, d.raw_value)


def decode_dead_letter(value: bytes) -> DeadLetter:
    """Read a dead-letter value of schema version 1 or 2; raises CodecError."""
    meta, raw = unpack_meta_blob(value, "dead_letter")
    try:
        o = meta.get("original")
        return DeadLetter(
            source_topic=str(meta["source_topic"]),
            partition=int(meta["partition"]),
            offset=int(meta["offset"]),
            reason=str(meta["reason"]),
            stage=str(meta["stage"]),
            raw_value=raw,
            raw_headers=tuple(
                (str(k), None if v is None else bytes.fromhex(v)) for k, v in meta["headers"]
            ),
            exception=str(meta.get("exception", "")),
            connect_stage=str(meta.get("connect_stage", VALUE_CONVERTER)),
            original=None
            if o is None
            else Original(
                value_size=int(o["value_size"]),
                value_sha256=str(o["value_sha256"]),
                headers_size=int(o["headers_size"]),
                headers_sha256=str(o["headers_sha256"]),
                headers_count=int(o["headers_count"]),
                key_size=int(o["key_size"]),
                key_sha256=str(o["key_sha256"]),
            ),
        )
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise CodecError("dead_letter", f"bad metadata: {exc!r}") from exc


def dead_letter_headers(d: DeadLetter) -> Headers:
    """The schema tag and Kafka Connect's error headers for ``d``."""
    return [
        (headers.SCHEMA, headers.schema_tag(SCHEMA_NAME, SCHEMA_VERSION)),
        (CONNECT_TOPIC, d.source_topic.encode("utf-8", "replace")),
        (CONNECT_PARTITION, str(d.partition).encode()),
        (CONNECT_OFFSET, str(d.offset).encode()),
        (CONNECT_CONNECTOR, f"drivestream-{d.stage}".encode("utf-8", "replace")),
        (CONNECT_STAGE, d.connect_stage.encode("utf-8", "replace")),
        (CONNECT_EXCEPTION, d.exception.encode("utf-8", "replace")),
        (CONNECT_MESSAGE, _clip(d.reason).encode("utf-8", "replace")),
    ]


def check_dead_letter_headers(hdrs: HeaderItems) -> None:
    """Raise unless the headers tag a dead letter this build reads (version 1 or 2)."""
    readable = {headers.schema_tag(SCHEMA_NAME, v) for v in (1, SCHEMA_VERSION)}
    if headers.get(hdrs, headers.SCHEMA) not in readable:
        headers.check_schema(hdrs, SCHEMA_NAME, SCHEMA_VERSION)


def dead_letter_record(
    d: DeadLetter, key: bytes | None, max_bytes: int = MAX_BYTES
) -> DeadLetterRecord:
    """The record to send for ``d``, at most ``max_bytes``: whole if it fits, else with
    raw value and headers cut (``original`` says what arrived), else :func:`minimal_record`."""
    if len(d.reason) > MAX_REASON_CHARS:
        d = dataclasses.replace(d, reason=_clip(d.reason))
    if key is None or len(key) <= MAX_KEY_BYTES:
        whole = DeadLetterRecord(encode_dead_letter(d), key, dead_letter_headers(d))
        if whole.size <= max_bytes:
            return whole
    return _cut(d, key, max_bytes) or minimal_record(d, key)


def send_dead_letter(
    send: Callable[[DeadLetterRecord], None], d: DeadLetter, key: bytes | None, max_bytes: int
) -> bool:
    """Send ``d`` with ``send``, cut to ``max_bytes``; when ``send`` raises a ProduceError
    for its size (librdkafka's limit, or the broker's when ``send`` waits for the ack), the
    minimal record goes instead. Returns whether what was sent was cut."""
    record = dead_letter_record(d, key, max_bytes)
    try:
        send(record)
    except ProduceError as exc:
        if not exc.too_large:
            raise
        record = minimal_record(d, key)
        send(record)
    return record.cut


def minimal_record(d: DeadLetter, key: bytes | None) -> DeadLetterRecord:
    """Where the record came from, why, and the sizes and sha256 of what arrived: no raw
    bytes, no key. Always under MIN_BYTES; sent when a larger one is refused."""
    small = dataclasses.replace(
        d,
        reason=_clip(d.reason),
        raw_value=b"",
        raw_headers=(),
        original=d.original or original_of(d.raw_value, d.raw_headers, key),
    )
    return DeadLetterRecord(encode_dead_letter(small), None, dead_letter_headers(small), True)


def original_of(value: bytes, hdrs: HeaderItems, key: bytes | None) -> Original:
    """Sizes and sha256 of a record's value, headers and key (see :class:`Original`)."""
    h = hashlib.sha256()
    size = count = 0
    for k, v in _normal_headers(hdrs):
        kb = k.encode("utf-8", "surrogatepass")
        h.update(_U32.pack(len(kb)) + kb + _I32.pack(-1 if v is None else len(v)) + (v or b""))
        size += len(kb) + len(v or b"")
        count += 1
    return Original(
        value_size=len(value),
        value_sha256=hashlib.sha256(value).hexdigest(),
        headers_size=size,
        headers_sha256=h.hexdigest(),
        headers_count=count,
        key_size=len(key or b""),
        key_sha256=hashlib.sha256(key or b"").hexdigest(),
    )


# --- internals -------------------------------------------------------------------------


def _cut(d: DeadLetter, key: bytes | None, max_bytes: int) -> DeadLetterRecord | None:
    """``d`` with raw value and headers cut to prefixes that fit, or None if nothing fits."""
    base = dataclasses.replace(
        d,
        raw_value=b"",
        raw_headers=(),
        original=d.original or original_of(d.raw_value, d.raw_headers, key),
    )
    out_key = key if key is not None and len(key) <= MAX_KEY_BYTES else None
    hdrs = dead_letter_headers(base)
    empty = len(encode_dead_letter(base))
    room = max_bytes - _record_size(b"", out_key, hdrs) - empty
    if room < 0:
        return None
    kept = _cut_headers(d.raw_headers, max(room // 4, room - len(d.raw_value)))
    partial = dataclasses.replace(base, raw_headers=kept)
    value_room = room - (len(encode_dead_letter(partial)) - empty)
    cut = dataclasses.replace(partial, raw_value=d.raw_value[: max(0, value_room)])
    record = DeadLetterRecord(encode_dead_letter(cut), out_key, hdrs, True)
    return record if record.size <= max_bytes else None


def _cut_headers(
    raw: tuple[tuple[str, bytes | None], ...], room: int
) -> tuple[tuple[str, bytes | None], ...]:
    """Leading headers whose JSON (``["key","hex"],``) fits in ``room`` bytes; the first one
    that does not fit keeps a prefix of its value, the rest are dropped."""
    kept: list[tuple[str, bytes | None]] = []
    used = 0
    for k, v in raw:
        k = k[:MAX_HEADER_KEY_CHARS]
        fixed = len(json.dumps(k)) + 4  # [ , ] and the comma after the entry
        cost = fixed + (4 if v is None else 2 * len(v) + 2)
        if used + cost <= room:
            kept.append((k, v))
            used += cost
            continue
        left = room - used - fixed - 2
        if v is not None and left >= 2:
            kept.append((k, v[: left // 2]))
        break
    return tuple(kept)


def _record_size(value: bytes, key: bytes | None, hdrs: Headers) -> int:
    head = sum(len(k.encode("utf-8", "replace")) + len(v or b"") + 10 for k, v in hdrs)
    return len(value) + len(key or b"") + head + _RECORD_OVERHEAD


def _clip(text: str) -> str:
    if len(text) <= MAX_REASON_CHARS:
        return text
    return text[: MAX_REASON_CHARS - 20] + f"... ({len(text)} chars)"


def _connect_stage(error: BaseException | None) -> str:
    """Kafka Connect's stage: a failure reading a header, else reading the value."""
    field = getattr(error, "field", "")
    on_header = isinstance(field, str) and (
        field in ("schema", "headers") or field.startswith("ds-")
    )
    return HEADER_CONVERTER if on_header else VALUE_CONVERTER


def _normal_headers(hdrs: HeaderItems) -> tuple[tuple[str, bytes | None], ...]:
    """Headers as (str, bytes | None) pairs, whatever a caller handed in."""
    out: list[tuple[str, bytes | None]] = []
    for item in hdrs or ():
        if isinstance(item, tuple) and len(item) == 2:
            k, v = item
        else:
            k, v = "", repr(item).encode()
        if isinstance(k, (bytes, bytearray)):
            k = bytes(k).decode("utf-8", "backslashreplace")
        elif not isinstance(k, str):
            k = repr(k)
        if v is not None and not isinstance(v, bytes):
            if isinstance(v, (bytearray, memoryview)):
                v = bytes(v)
            elif isinstance(v, str):
                v = v.encode("utf-8", "surrogatepass")
            else:
                v = repr(v).encode()
        out.append((k, v))
    return tuple(out)
