"""What a client hands back: one record with where it came from, and topic-partitions."""

from __future__ import annotations

import operator
from typing import NamedTuple

import confluent_kafka

from schemas.headers import UNREADABLE, Headers

TopicPartition = tuple[str, int]
"""(topic, partition)."""


class Message(NamedTuple):
    """One consumed record with where it came from (a tuple: cheap to make per record)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: Headers


_HEADERS = operator.methodcaller("headers")
"""``m.headers()`` through a call path that checks for a pending error: on a key that is not
UTF-8, confluent-kafka returns a list *and* sets an error, which CPython's specialised
method call in a hot loop does not check, so it would surface later, anywhere."""


def headers_of(m: confluent_kafka.Message) -> Headers:
    """A record's headers; if the client cannot read them (confluent-kafka fails on a key
    that is not UTF-8), one UNREADABLE header saying why, which check_schema rejects."""
    try:
        return _HEADERS(m) or []  # type: ignore[no-any-return]  # (str, bytes | None) pairs
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc.__cause__ or exc}"[:200]
        return [(UNREADABLE, why.encode("utf-8", "replace"))]
