"""The service's output side: publish predictions and dead letters, commit what they cover.

At-least-once (the default): an input offset is committed only after the predictions of
every frame below it were handed to the producer, the producer was flushed and it reported
no failed delivery. After any failed delivery the output is halted and commits nothing more,
so a restart resumes from the last good commit and answers those frames again.

Exactly-once (``--guarantee exactly-once``): the producer is transactional; predictions and
dead letters since the last commit, and the input offsets they cover, commit in one Kafka
transaction every ``transaction_ms``. A crash aborts the open transaction, so consumers that
read committed (librdkafka's default) see every frame answered once.
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from inference.batch_encoder import BatchPredictionEncoder
from inference.batching import Pending
from inference.config import ServeConfig
from inference.errors import DeliveryError
from inference.metrics import ServeMetrics
from schemas import deadletter, prediction
from schemas.headers import now_ns
from schemas.kafka import Consumer, KafkaSettings, Message, ProduceError, Producer, TopicPartition
from schemas.prediction_json import JsonPredictionEncoder

log = logging.getLogger(__name__)

TRANSACTION_TIMEOUT_MS = 10_000
"""Exactly-once: the broker aborts a transaction left open this long (its producer died)."""


class Answer(NamedTuple):
    """What one batch of predictions shares: who answered, why, when, at which horizons."""

    horizons: tuple[float, ...]
    model_version: int
    names: Sequence[str]
    """Model name per item (the fallback picks cv or ctrv per vehicle)."""
    source: prediction.Source
    reason: str
    t_infer_start_ns: int
    t_infer_end_ns: int


class Output:
    """Owns the producer and the per-partition offset ledger of one serving instance.

    ``next_offset`` holds, per input partition, the offset after the last record whose every
    frame was answered or queued; ``committed`` what was last committed. The caller passes the
    offsets of frames still waiting in the batcher, which hold commits back below them.
    """

    def __init__(self, config: ServeConfig, metrics: ServeMetrics, stats: Counter[str]) -> None:
        self.config = config
        self.metrics = metrics
        self.stats = stats
        self.producer: Producer | None = None
        self.next_offset: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.halted = False
        """Set after a failed delivery or an unclean close: nothing is committed any more."""
        self._encoder: prediction.ValueEncoder = (
            JsonPredictionEncoder()
            if config.predictions_format == "json"
            else BatchPredictionEncoder()
        )
        self._headers = prediction.prediction_headers(
            "json" if config.predictions_format == "json" else "binary"
        )

    def open(self, settings: KafkaSettings) -> None:
        # connect first: the first prediction is not held back
        txn = (
            {
                "transactional_id": f"{self.config.group_id}-"
                + (self.config.instance_id or uuid.uuid4().hex[:12]),
                # a crashed instance's open transaction holds read_committed consumers back
                # until the broker aborts it: keep that short
                "transaction_timeout_ms": TRANSACTION_TIMEOUT_MS,
                "message_timeout_ms": TRANSACTION_TIMEOUT_MS,  # librdkafka: <= the above
            }
            if self.config.exactly_once
            else {}
        )
        self.producer = Producer(
            settings,
            on_failure=self._refused,
            delivery_report_only_error=True,
            linger_ms=self.config.linger_ms,
            max_in_flight_requests_per_connection=self.config.max_in_flight,
            **txn,
        ).connect()

    def close(self) -> None:
        """Close the producer (it flushes); the consumer must be closed first (its revoke
        drain still publishes)."""
        if self.producer is not None:
            self.producer.close()
        self.producer = None

    def halt(self) -> None:
        self.halted = True

    # --- publishing ------------------------------------------------------------------
    def publish(self, items: Sequence[Pending], points: np.ndarray, answer: Answer) -> None:
        """Publish one prediction per item (``points[i]``: its ``[K, 2]`` positions); never
        flushes.

        The batch is stamped t_published_ns once, as its encoding starts, and encoded in
        one pass. Counters and latency histograms are updated once for the whole batch.
        They count records handed to the producer; a record that then fails to deliver
        stops the service at the next check (see check_delivery), uncommitted.
        """
        producer = self.producer
        assert producer is not None
        if not items:
            return
        enc = self._encoder
        t_pub = now_ns()
        cols, misses = _columns(items, answer, t_pub)
        names, n = answer.names, len(items)
        assert len(names) == n, "one model name per item"
        if names.count(names[0]) == n:  # one model, or one physics for the whole batch
            middles = [enc.middle(names[0], answer.source, answer.reason)] * n
        else:
            mids = {name: enc.middle(name, answer.source, answer.reason) for name in set(names)}
            middles = [mids[name] for name in names]
        vids = [it.vehicle_id for it in items]
        stamps = cols[:, 2:]
        values = enc.encode_many(
            vids, cols[:, :2], answer.model_version, middles, stamps, answer.horizons, points
        )
        producer.send_many(self.config.predictions_topic, values, vids, self._headers)
        self._account(stamps, misses, answer.source)

    def _account(self, stamps: np.ndarray, misses: int, source: prediction.Source) -> None:
        """Counters and stage histograms of one batch: ``stamps`` as :func:`_columns` gives
        them, ``misses`` of which were published after their deadline."""
        n, m = len(stamps), self.metrics
        self.stats[source] += n
        m.by_source[source].inc(n)
        if misses:
            self.stats["budget_miss"] += misses
            m.budget_misses.labels(source=source).inc(misses)
        m.stage_latency.observe_batch(stamps)

    def dead_letter(self, msg: Message, reason: str, error: BaseException | None = None) -> None:
        """Send an unusable record to the dead-letter topic: raw bytes and headers kept,
        cut to max_deadletter_bytes if larger (sizes and sha256 of the original kept).

        ``error`` defaults to the exception being handled, for its class name. A dead letter
        the broker refuses for its size anyway is replaced by a minimal one (where, why,
        sizes and sha256); any other failure stops the service like a lost prediction.
        """
        assert self.producer is not None
        error = error if error is not None else sys.exc_info()[1]
        d = deadletter.of_record(
            msg.topic, msg.partition, msg.offset, msg.value, msg.headers, reason, "inference", error
        )
        if deadletter.send_dead_letter(self._send, d, msg.key, self.config.max_deadletter_bytes):
            self.stats["deadletter_cut"] += 1
        self.stats["deadletter"] += 1
        self.metrics.deadletters.inc()
        log.debug("deadletter %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, d.reason)

    def _send(self, record: deadletter.DeadLetterRecord) -> None:
        assert self.producer is not None
        self.producer.send(
            self.config.deadletter_topic, record.value, key=record.key, headers=record.headers
        )

    def _refused(self, exc: ProduceError, sent: Message) -> bool:
        """A dead letter the broker refused for its size: send a minimal one instead (this
        runs inside the producer's poll/flush, so a commit after the flush covers it)."""
        if sent.topic != self.config.deadletter_topic or not exc.too_large:
            return False
        d = deadletter.decode_dead_letter(sent.value)
        if d.original is not None and not d.raw_value and not d.raw_headers:
            return False  # already minimal: a real failure
        log.warning(
            "deadletter of %s[%d]@%d refused (%s): sending only its sizes and sha256",
            d.source_topic,
            d.partition,
            d.offset,
            exc,
        )
        self.stats["deadletter_minimal"] += 1
        self._send(deadletter.minimal_record(d, sent.key))
        return True

    def flush_delivered(self) -> None:
        """Flush the producer, then raise DeliveryError if anything failed to deliver."""
        assert self.producer is not None
        self.producer.flush()
        self.check_delivery()

    def check_delivery(self) -> None:
        """Raise DeliveryError (and never commit again) once any record failed to deliver."""
        assert self.producer is not None
        self.producer.poll()  # serve delivery reports now, even while no frames arrive
        failures = self.producer.failures
        if not failures:
            return
        self.halted = True
        log.error("%d records not delivered; stopping without committing", failures)
        raise DeliveryError(
            f"{failures} prediction/deadletter records could not be delivered (last error: "
            f"{self.producer.last_error}); offsets after the last commit were not committed. "
            f"Check the broker and topics {self.config.predictions_topic!r}/"
            f"{self.config.deadletter_topic!r}, then restart: those frames are answered again."
        )

    # --- offsets ---------------------------------------------------------------------
    def done(self, msg: Message) -> None:
        """Every frame of ``msg`` was answered or queued: the record no longer holds commits."""
        self.next_offset[(msg.topic, msg.partition)] = msg.offset + 1

    def due(
        self,
        waiting: dict[TopicPartition, int],
        keys: set[TopicPartition] | None = None,
        again: bool = False,
    ) -> dict[TopicPartition, int]:
        """Next offsets to commit: below every frame still ``waiting``, not yet committed
        (``again``: even if committed, as a commit sent without waiting may yet fail)."""
        offsets = {
            k: waiting.get(k, v) for k, v in self.next_offset.items() if keys is None or k in keys
        }
        return {k: v for k, v in offsets.items() if again or self.committed.get(k) != v}

    def commit(
        self,
        consumer: Consumer,
        waiting: dict[TopicPartition, int],
        wait: bool = True,
        unless_busy: bool = False,
    ) -> bool:
        """Flush predictions, make sure all were delivered, then commit what they cover.

        ``wait=False`` (the serving loop) only sends the commit: the loop does not stall for
        the broker's round trip, and offsets the broker refuses are due again
        (``commit_refused``). ``unless_busy``: do not flush; commit only if every record
        handed to the producer was delivered already, else commit nothing and return False
        (the loop tries again after its next wait). Returns True when done.
        """
        assert self.producer is not None
        if unless_busy:
            self.check_delivery()  # serves the reports: a failed delivery stops here
            if self.producer.undelivered():
                return False
        offsets = self.due(waiting)
        if not offsets or self.halted:
            return True
        if self.config.exactly_once:
            self.commit_offsets(consumer, offsets)
            return True
        if not unless_busy:  # else nothing is in flight: every failure was reported above
            self.flush_delivered()
        try:
            consumer.commit(offsets, wait=wait)
            self.committed.update(offsets)
        except Exception as exc:  # rebalance in progress: the revoke drain commits instead
            log.warning("offset commit failed (frames may be answered again): %s", exc)
        return True

    def commit_refused(self, offsets: dict[TopicPartition, int]) -> None:
        """The broker refused a commit sent without waiting: those offsets are due again."""
        for key, offset in offsets.items():
            if self.committed.get(key) == offset:
                del self.committed[key]

    def commit_offsets(self, consumer: Consumer, offsets: dict[TopicPartition, int]) -> None:
        """Commit ``offsets`` whose answers were flushed (at-least-once), or in the open
        transaction with its answers (exactly-once: DeliveryError if it fails)."""
        assert self.producer is not None
        if not self.config.exactly_once:
            consumer.commit(offsets)
            self.committed.update(offsets)
            return
        try:
            self.producer.commit_transaction(offsets, consumer.group_metadata())
        except ProduceError as exc:
            self.halted = True
            raise DeliveryError(
                f"transaction not committed ({exc}): it was aborted, so its answers are not "
                "visible; a restart answers those frames again"
            ) from exc
        self.committed.update(offsets)

    def forget(self, keys: set[TopicPartition]) -> None:
        """Drop the offsets of partitions this instance no longer owns."""
        for key in keys:
            self.next_offset.pop(key, None)
            self.committed.pop(key, None)


def _columns(items: Sequence[Pending], answer: Answer, t_pub: int) -> tuple[np.ndarray, int]:
    """``[n, 7]`` int64 of a batch: seq and t_event_ns (what each prediction answers), then
    its five stamps (t_produce_ns, t_consumed_ns, t_infer_start_ns, t_infer_end_ns,
    t_published_ns); and how many were published after their deadline (a deadline is
    never in the array: only it can pass int64, validation bounds the rest)."""
    t0, t1 = answer.t_infer_start_ns, answer.t_infer_end_ns
    rows = [
        (it.seq, it.t_event_ns, it.origin.t_produce_ns, it.origin.t_consumed_ns, t0, t1, t_pub)
        for it in items
    ]
    misses = sum(it.origin.deadline_ns < t_pub for it in items)
    return np.array(rows, np.int64), misses
