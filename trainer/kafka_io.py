"""Kafka side of a trainer rank: its sensors partitions and rank 0's link to the server."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaException

from schemas.errors import DrivestreamError, ValidationError
from schemas.kafka import Consumer, KafkaSettings, ProduceError, Producer
from schemas.sensor import SensorFrame, check_frame_headers, decode_frames
from trainer import wire

log = logging.getLogger(__name__)


class PushError(DrivestreamError):
    """A delta was not acknowledged by ps-updates in time; the trainer retries it later."""


def owned_partitions(partitions: set[int], rank: int, world: int) -> list[int]:
    """Decision 4: rank r owns the partitions p with p % world == r."""
    return sorted(p for p in partitions if p % world == rank)


class KafkaFrameSource:
    """Reads this rank's sensors partitions by manual assignment.

    Starts from ``offsets`` (the checkpoint's) where given, else the group's committed
    offsets, else the earliest. Invalid records are skipped and counted: the inference
    service is the stage that dead-letters them.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        topic: str,
        group_id: str,
        rank: int,
        world: int,
        offsets: dict[int, int] | None = None,
    ) -> None:
        self.topic = topic
        self.invalid = 0
        self.failed_commits = 0
        self._consumer = Consumer(settings, group_id=group_id)
        self.partitions = owned_partitions(self._consumer.wait_partitions(topic), rank, world)
        self._pos: dict[int, int] = {}
        if self.partitions:
            committed = self._consumer.committed(topic, self.partitions)
            for p in self.partitions:
                start = (offsets or {}).get(p, committed[p])
                if start is not None:
                    self._pos[p] = start
            self._consumer.assign(topic, self.partitions, self._pos)

    def poll(self, timeout_s: float) -> list[tuple[list[SensorFrame], int]]:
        if not self.partitions:
            time.sleep(timeout_s)
            return []
        out = []
        for msg in self._consumer.poll(int(timeout_s * 1000), max_records=5000):
            self._pos[msg.partition] = msg.offset + 1
            try:
                produced = check_frame_headers(msg.headers)
                out.append((decode_frames(msg.value), produced))
            except ValidationError as exc:
                self.invalid += 1
                log.debug("skipping invalid sensors record at %s: %s", msg.offset, exc)
        return out

    def positions(self) -> dict[int, int]:
        return dict(self._pos)

    def commit(self) -> None:
        """Commit the positions (a hint: the trainer checkpoint's offsets come first on a
        restart); a broker that is away costs a warning, never the rank."""
        if not self._pos:
            return
        try:
            self._consumer.commit({(self.topic, p): o for p, o in self._pos.items()})
        except KafkaException as exc:
            self.failed_commits += 1
            if self.failed_commits == 1 or self.failed_commits % 100 == 0:
                log.warning("offset commit failed (%d so far): %s", self.failed_commits, exc)

    def close(self) -> None:
        self._consumer.close()


class KafkaPSLink:
    """Pushes deltas to ps-updates (one partition: a total order) and tails ps-weights.

    A push returns only once the broker has acknowledged the delta (acks=all), so the loop
    moves its anchor, checkpoints and commits only what the server is sure to receive.
    """

    def __init__(self, settings: KafkaSettings, updates_topic: str, weights_topic: str) -> None:
        self.updates_topic = updates_topic
        self._producer = Producer(settings)
        self._consumer = Consumer(settings, group_id=None)
        self._consumer.wait_partitions(weights_topic)
        _, end = self._consumer.watermarks(weights_topic, 0)
        self._consumer.assign(weights_topic, [0], {0: max(0, end - 1)})  # newest weights only
        self._latest: wire.Weights | None = None
        self.pending_offset: int | None = None
        """ps-updates offset of the last push, until published weights have processed it."""

    def push(self, delta: wire.Delta, timeout_s: float) -> None:
        """Send ``delta`` and wait for its acknowledgement; raise :class:`PushError` if not.

        A record not acknowledged in time stays queued and may still land: the trainer's
        retry carries the same ``anchor_id``, so the server never merges it twice."""
        try:
            offset = self._producer.send_and_wait(
                self.updates_topic,
                wire.encode_delta(delta),
                key=delta.group,
                headers=wire.delta_headers(),
                partition=0,
                timeout_s=timeout_s,
            )
        except ProduceError as exc:
            raise PushError(
                f"delta push to {self.updates_topic!r} not acknowledged ({exc}): is the broker up?"
            ) from exc
        self.pending_offset = offset

    def ready(self) -> bool:
        """True once the server has published weights that processed the previous push.

        Until then the group keeps training and accumulates its delta: while the server is
        down it gets one larger delta on restart, not a backlog that replays stale.
        """
        w = self.latest()
        pending = self.pending_offset
        if pending is not None and w is not None and w.updates_offset > pending:
            self.pending_offset = None
        return self.pending_offset is None

    def latest(self) -> wire.Weights | None:
        """The newest readable weights so far (an unreadable record never hides the good
        one before it in the same poll)."""
        for msg in self._consumer.poll(0):
            try:
                wire.check_weights_headers(msg.headers)
                w = wire.decode_weights(msg.value)
            except ValidationError as exc:
                log.warning("ignoring unreadable ps-weights record %s: %s", msg.offset, exc)
                continue
            if self._latest is None or w.version >= self._latest.version:
                self._latest = w
        return self._latest

    def close(self) -> None:
        self._producer.close()
        self._consumer.close()
