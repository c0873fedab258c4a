"""Lazy, flush-on-close producer on librdkafka."""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import confluent_kafka

from schemas.errors import ConfigError, ProduceError
from schemas.headers import Headers
from schemas.kafka.records import Message, TopicPartition, headers_of
from schemas.kafka.settings import (
    PRODUCER_DEFAULTS,
    ErrorLog,
    KafkaSettings,
    librdkafka_config,
    topic_partitions,
)

log = logging.getLogger(__name__)


_IDEMP_ASSIGNED = re.compile(r'"idemp_state":\s*"Assigned"')


def _produce_error(err: Any, topic: str = "") -> ProduceError:
    """A ProduceError from a librdkafka KafkaError (or whatever KafkaException carried)."""
    if isinstance(err, confluent_kafka.KafkaError):
        where = f" (topic {topic!r})" if topic else ""
        return ProduceError(f"{err.name()}: {err.str()}{where}", code=err.name())
    return ProduceError(str(err))


def _is_on(value: Any) -> bool:
    """A librdkafka boolean setting as given (True, "true", 1, ...) is set."""
    return str(value).lower() in ("true", "1")


FailureHandler = Callable[[ProduceError, "Message"], bool]
"""Sees a failed delivery (the error, the record) first; True when it dealt with it."""


class Producer:
    """Lazy, flush-on-close producer of raw bytes on librdkafka; ``send`` never flushes.

    librdkafka's C client costs ~6 µs per record where kafka-python's costs ~37 µs
    (BENCHMARKS.md), which is most of a serving instance's budget per frame at 5,000/s.
    Delivery failures are counted in ``failures`` (and logged): a caller that commits input
    offsets after a flush compares the count before and after, so a lost record is never
    committed past. ``on_failure`` sees each failure first (on the thread that polls or
    flushes) and may deal with it instead, e.g. by sending a smaller record. Overrides are
    librdkafka settings with dots as underscores (``linger_ms=5``);
    ``delivery_report_only_error=True`` spares a Python callback per delivered record (failures
    are still reported), for senders that never wait on one record (not send_and_wait).
    """

    def __init__(
        self, settings: KafkaSettings, *, on_failure: FailureHandler | None = None, **overrides: Any
    ) -> None:
        self._settings = settings
        self._on_failure = on_failure
        self._in_callback = False
        """Set while on_failure runs inside poll()/flush(): sends from there must not poll."""
        self._errors = ErrorLog()
        self._config = librdkafka_config(PRODUCER_DEFAULTS, settings, overrides, self._errors)
        self._producer: confluent_kafka.Producer | None = None
        self._ready = not _is_on(self._config.get("enable.idempotence"))
        self._only_errors = _is_on(self._config.get("delivery.report.only.error"))
        self.failures = 0
        self.last_error: ProduceError | None = None

    @property
    def client(self) -> confluent_kafka.Producer:
        if self._producer is None:
            try:
                self._producer = confluent_kafka.Producer(self._config)
            except confluent_kafka.KafkaException as exc:
                raise ConfigError(f"bad producer settings: {exc}") from exc
        return self._producer

    @property
    def ready(self) -> bool:
        """True once records are sent at once (an idempotent producer has its id)."""
        return self._ready

    def _on_stats(self, stats: str) -> None:
        if not self._ready:
            self._ready = _IDEMP_ASSIGNED.search(stats) is not None

    def connect(self, timeout_s: float = 10.0) -> Producer:
        """Start the client and wait until it can send at once; call before the first send.

        An idempotent librdkafka producer gets its producer id only ~0.5 s after it is
        created, and holds every record until then: a latency-critical sender calls this
        before its first timed record. Readiness comes from librdkafka's statistics, which a
        connected producer then reports every 100 ms: its owner must send or :meth:`poll`
        regularly (the serving loop polls every step). Raises ConfigError if the cluster
        does not answer (ClusterAuthError if it refused the credentials).
        """
        if self._producer is not None:
            raise RuntimeError("connect() starts the client: call it before the first send")
        if self.transactional:
            try:
                self.client.init_transactions(timeout_s)
                self.client.begin_transaction()
            except confluent_kafka.KafkaException as exc:
                raise self._errors.failure(
                    self._settings, f"no transactional producer id ({exc.args[0]})"
                ) from exc
            self._ready = True
            return self
        if not self._ready:
            self._config = {
                **self._config,
                "statistics.interval.ms": 100,
                "stats_cb": self._on_stats,
            }
        client = self.client
        deadline = time.monotonic() + timeout_s
        while not self._ready:
            if time.monotonic() > deadline or self._errors.refused is not None:
                raise self._errors.failure(self._settings, f"no producer id within {timeout_s}s")
            client.poll(0.02)
        return self

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | str | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> None:
        """Queue one record (waiting while librdkafka's queue is full); errors are counted.

        Raises ProduceError if librdkafka refuses the record at once (larger than its
        ``message.max.bytes``, say).
        """
        self._produce(topic, value, key, headers, partition, self._on_delivery)
        self._serve_reports()

    def send_many(
        self,
        topic: str,
        values: Sequence[bytes],
        keys: Sequence[bytes | str | None],
        headers: Headers | None = None,
    ) -> None:
        """:meth:`send` for a batch: every record is queued, then delivery reports are
        served once (not once per record)."""
        deliver = self._on_delivery
        for value, key in zip(values, keys, strict=True):
            self._produce(topic, value, key, headers, None, deliver)
        self._serve_reports()

    def send_and_wait(
        self,
        topic: str,
        value: bytes,
        key: bytes | str | None = None,
        *,
        headers: Headers | None = None,
        partition: int | None = None,
        timeout_s: float = 30.0,
    ) -> int:
        """Send one record and wait for the broker's acknowledgement; returns its offset.

        Raises :class:`ProduceError` when it fails or is not acknowledged in time.
        """
        if self._only_errors:
            raise RuntimeError("send_and_wait needs delivery reports of successes too")
        result: list[Any] = []

        def done(err: Any, msg: Any) -> None:
            self._on_delivery(err, msg)
            result.append(err or msg.offset())

        self._produce(topic, value, key, headers, partition, done)
        self.client.flush(timeout_s)
        if not result:
            raise ProduceError(f"no acknowledgement from {topic!r} within {timeout_s}s")
        if not isinstance(result[0], int):
            raise _produce_error(result[0], topic)
        return result[0]

    def _produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | str | None,
        headers: Headers | None,
        partition: int | None,
        on_delivery: Callable[[Any, Any], None],
    ) -> None:
        client = self.client
        while True:
            try:
                client.produce(
                    topic,
                    value,
                    key,
                    -1 if partition is None else partition,
                    on_delivery,
                    headers=headers,  # type: ignore[arg-type]  # None values are fine
                )
                break
            except BufferError as exc:  # local queue full: serve deliveries, then retry
                if self._in_callback:
                    raise ProduceError("librdkafka's queue is full", "_QUEUE_FULL") from exc
                client.poll(0.05)
            except confluent_kafka.KafkaException as exc:  # refused at once (size, topic name)
                raise _produce_error(exc.args[0], topic) from exc

    def _serve_reports(self) -> None:
        if not self._in_callback:  # a poll nested in a callback's poll aborts confluent-kafka
            self.client.poll(0)

    @property
    def transactional(self) -> bool:
        """Made with a ``transactional_id``: :meth:`connect` opens the first transaction."""
        return "transactional.id" in self._config

    def commit_transaction(
        self, offsets: dict[TopicPartition, int], group_metadata: object, timeout_s: float = 30.0
    ) -> None:
        """Commit the open transaction together with the input ``offsets`` of the consumer
        whose ``group_metadata`` is given, then open the next one. On failure the transaction
        is aborted (what it held is never seen by read_committed consumers) and ProduceError
        raised."""
        client = self.client
        tps = [confluent_kafka.TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            if tps:
                client.send_offsets_to_transaction(tps, group_metadata, timeout_s)
            client.commit_transaction(timeout_s)
        except confluent_kafka.KafkaException as exc:
            with contextlib.suppress(confluent_kafka.KafkaException):
                client.abort_transaction(timeout_s)
            raise _produce_error(exc.args[0]) from exc
        client.begin_transaction()

    def undelivered(self) -> int:
        """Records handed over that the broker has not acknowledged yet (plus reports not
        yet served by :meth:`poll`): 0 once everything sent so far was delivered."""
        return len(self._producer) if self._producer is not None else 0

    def poll(self) -> None:
        """Serve what librdkafka reported (delivery failures, statistics) without waiting."""
        if self._producer is not None:
            self._producer.poll(0)

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is None:
            return
        if self._on_failure is not None and self._handled(_produce_error(err), msg):
            return
        self.failures += 1
        self.last_error = _produce_error(err)
        log.error("send to %s failed: %s", msg.topic(), self.last_error)

    def _handled(self, exc: ProduceError, msg: Any) -> bool:
        """Ask ``on_failure``; one that raises has not dealt with it (and must not raise out
        of librdkafka's delivery callback)."""
        assert self._on_failure is not None
        record = Message(
            msg.topic(), msg.partition(), -1, 0, msg.key(), msg.value() or b"", headers_of(msg)
        )
        self._in_callback = True
        try:
            return bool(self._on_failure(exc, record))
        except Exception:
            log.exception("on_failure raised; counting the failed delivery")
            return False
        finally:
            self._in_callback = False

    def partitions_for(self, topic: str, timeout_s: float = 10.0) -> set[int]:
        """The topic's partitions, or an empty set when the cluster does not have it."""
        return topic_partitions(self.client, topic, timeout_s)

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every queued record is delivered or failed; ProduceError on timeout."""
        if self._producer is None:
            return
        left = self._producer.flush(-1 if timeout_s is None else timeout_s)
        if left:
            raise ProduceError(f"{left} records still undelivered after {timeout_s}s")

    def close(self, timeout_s: float = 10.0) -> None:
        if self._producer is not None:
            try:
                self.flush(timeout_s)
            finally:
                self._producer = None

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
