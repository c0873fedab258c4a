"""The service's output side: publish predictions and dead letters, commit what they cover.

Delivery is at-least-once: an input offset is committed only after the predictions of every
frame below it were handed to the producer, the producer was flushed and it reported no failed
delivery. After any failed delivery the output is halted and commits nothing more, so a
restart resumes from the last good commit and answers those frames again.
"""

from __future__ import annotations

import logging
from collections import Counter

from inference.config import ServeConfig
from inference.errors import DeliveryError
from inference.metrics import ServeMetrics
from schemas import deadletter, prediction
from schemas.headers import now_ns
from schemas.kafka import Consumer, KafkaSettings, Message, Producer

log = logging.getLogger(__name__)

Key = tuple[str, int]
"""(topic, partition) of the input."""

_PRED_HEADERS = prediction.prediction_headers()
_DL_HEADERS = deadletter.dead_letter_headers()


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
        self.next_offset: dict[Key, int] = {}
        self.committed: dict[Key, int] = {}
        self.halted = False
        """Set after a failed delivery or an unclean close: nothing is committed any more."""

    def open(self, settings: KafkaSettings) -> None:
        self.producer = Producer(settings)

    def close(self) -> None:
        """Close the producer (it flushes); the consumer must be closed first (its revoke
        drain still publishes)."""
        if self.producer is not None:
            self.producer.close()
        self.producer = None

    def halt(self) -> None:
        self.halted = True

    # --- publishing ------------------------------------------------------------------
    def prediction(self, p: prediction.Prediction, deadline_ns: int) -> None:
        """Stamp t_published_ns right before producing; never flushes.

        Counters here count records handed to the producer; a record that then fails to
        deliver stops the service at the next check (see check_delivery), uncommitted.
        """
        assert self.producer is not None
        p = p.published(now_ns())
        self.producer.send(
            self.config.predictions_topic,
            prediction.encode_prediction(p),
            key=p.vehicle_id,
            headers=_PRED_HEADERS,
        )
        self.stats[p.source] += 1
        m = self.metrics
        m.by_source[p.source].inc()
        if p.t_published_ns > deadline_ns:
            self.stats["budget_miss"] += 1
            m.budget_misses.labels(source=p.source).inc()
        st = m.stages
        st["kafka_in"].observe(max(0, p.t_consumed_ns - p.t_produce_ns) / 1e9)
        st["queue"].observe((p.t_infer_start_ns - p.t_consumed_ns) / 1e9)
        st["infer"].observe((p.t_infer_end_ns - p.t_infer_start_ns) / 1e9)
        st["publish"].observe((p.t_published_ns - p.t_infer_end_ns) / 1e9)
        st["service"].observe((p.t_published_ns - p.t_consumed_ns) / 1e9)
        st["since_produce"].observe(max(0, p.t_published_ns - p.t_produce_ns) / 1e9)

    def dead_letter(self, msg: Message, reason: str) -> None:
        """Send an undecodable record, raw bytes and headers kept, to the dead-letter topic."""
        assert self.producer is not None
        dl = deadletter.DeadLetter(
            msg.topic,
            msg.partition,
            msg.offset,
            reason,
            "inference",
            msg.value or b"",
            tuple(msg.headers),
        )
        self.producer.send(
            self.config.deadletter_topic,
            deadletter.encode_dead_letter(dl),
            key=msg.key,
            headers=_DL_HEADERS,
        )
        self.stats["deadletter"] += 1
        self.metrics.deadletters.inc()
        log.debug("deadletter %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, reason)

    def flush_delivered(self) -> None:
        """Flush the producer, then raise DeliveryError if anything failed to deliver."""
        assert self.producer is not None
        self.producer.flush()
        self.check_delivery()

    def check_delivery(self) -> None:
        """Raise DeliveryError (and never commit again) once any record failed to deliver."""
        assert self.producer is not None
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

    def due(self, waiting: dict[Key, int], keys: set[Key] | None = None) -> dict[Key, int]:
        """Next offsets to commit: below every frame still ``waiting``, not yet committed."""
        offsets = {
            k: waiting.get(k, v) for k, v in self.next_offset.items() if keys is None or k in keys
        }
        return {k: v for k, v in offsets.items() if self.committed.get(k) != v}

    def commit(self, consumer: Consumer, waiting: dict[Key, int]) -> None:
        """Flush predictions, make sure all were delivered, then commit what they cover."""
        offsets = self.due(waiting)
        if not offsets or self.halted:
            return
        self.flush_delivered()
        try:
            consumer.commit(offsets)
            self.committed.update(offsets)
        except Exception as exc:  # rebalance in progress: the revoke drain commits instead
            log.warning("offset commit failed (frames may be answered again): %s", exc)

    def forget(self, keys: set[Key]) -> None:
        """Drop the offsets of partitions this instance no longer owns."""
        for key in keys:
            self.next_offset.pop(key, None)
            self.committed.pop(key, None)
