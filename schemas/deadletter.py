"""Dead letter: an input record that could not be used, kept whole with the reason."""

from __future__ import annotations

from dataclasses import dataclass

from schemas import headers
from schemas.binary import pack_meta_blob, unpack_meta_blob
from schemas.errors import CodecError
from schemas.headers import Headers

SCHEMA_NAME = "dead_letter"
SCHEMA_VERSION = 1


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
    raw_headers: tuple[tuple[str, bytes], ...] = ()


def encode_dead_letter(d: DeadLetter) -> bytes:
    meta = {
        "source_topic": d.source_topic,
        "partition": d.partition,
        "offset": d.offset,
        "reason": d.reason,
        "stage": d.stage,
        "headers": [[k, v.hex()] for k, v in d.raw_headers],
    }
    return pack_meta_blob(meta, d.raw_value)


def decode_dead_letter(value: bytes) -> DeadLetter:
    meta, raw = unpack_meta_blob(value, "dead_letter")
    try:
        return DeadLetter(
            source_topic=meta["source_topic"],
            partition=int(meta["partition"]),
            offset=int(meta["offset"]),
            reason=meta["reason"],
            stage=meta["stage"],
            raw_value=raw,
            raw_headers=tuple((k, bytes.fromhex(v)) for k, v in meta["headers"]),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise CodecError("dead_letter", f"bad metadata: {exc}") from exc


def dead_letter_headers() -> Headers:
    return [(headers.SCHEMA, headers.schema_tag(SCHEMA_NAME, SCHEMA_VERSION))]
