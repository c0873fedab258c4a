"""Consumer-group rebalance: drain revoked partitions inside the listener itself.

kafka-python (3.0.x) awaits this listener on the consumer's own event loop while the serving
thread waits inside ``consumer.poll()`` (or ``close()``) for the rebalance to finish. So the
listener must never wait for the serving thread; it may use the service's state directly
because that thread is parked in the consumer call. It answers the revoked partitions' waiting
frames with the fallback (reason "rebalance"), flushes the producer (its own IO thread) and
commits their offsets by awaiting the coordinator's commit on this same loop: the blocking
``consumer.commit()`` would call ``net.run`` from the loop's thread and raise.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kafka import TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata

if TYPE_CHECKING:
    from inference.service import InferenceService

log = logging.getLogger(__name__)

COMMIT_TIMEOUT_MS = 10_000
Offsets = dict[tuple[str, int], int]


async def commit_on_loop(client: object, offsets: Offsets) -> None:
    """Commit ``offsets`` from a coroutine running on the consumer's event loop."""
    coordinator = client._coordinator  # type: ignore[attr-defined]
    tps = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}
    commit = getattr(coordinator, "_commit_offsets_sync_async", None)
    if commit is not None:  # what kafka-python's own pre-rebalance auto-commit awaits (retries)
        await commit(tps, timeout_ms=COMMIT_TIMEOUT_MS)
    else:
        await coordinator.commit_offsets_async(tps)


class RebalanceDrain(AsyncConsumerRebalanceListener):
    """Answer, flush and commit revoked partitions before the group moves them."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in revoked}
        if not keys:
            return
        svc = self.service
        svc.stats["revoked_partitions"] += len(keys)
        try:
            offsets = svc._release(keys)
            if offsets:
                await commit_on_loop(svc._consumer_client(), offsets)
        except Exception as exc:  # any failure: the next owner re-answers from the commit
            log.warning(
                "revoke of partitions %s not drained (%s): the next owner answers frames "
                "after the last commit again",
                sorted(p for _, p in keys),
                exc,
            )
        finally:
            svc._forget(keys)

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        """Membership already gone: committing is impossible, so answer nothing here either."""
        keys = {(tp.topic, tp.partition) for tp in lost}
        log.warning("lost partitions %s; their next owner answers them", sorted(p for _, p in keys))
        self.service._forget(keys)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        svc = self.service
        svc.assigned |= {(tp.topic, tp.partition) for tp in assigned}
        log.info("assigned partitions %s", sorted(p for _, p in svc.assigned))
