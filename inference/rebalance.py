"""Consumer-group rebalance: drain revoked partitions inside the listener itself.

librdkafka calls the listener on the serving thread, inside ``consumer.poll()`` (or
``close()``), before the group moves the partitions. The listener answers the revoked
partitions' waiting frames with the fallback (reason "rebalance"), flushes the producer and
commits their offsets synchronously, so the next owner starts right after the last answer.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from schemas.kafka import TopicPartition

if TYPE_CHECKING:
    from inference.service import InferenceService

log = logging.getLogger(__name__)


class RebalanceDrain:
    """Answer, flush and commit revoked partitions before the group moves them."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service

    def on_revoked(self, keys: set[TopicPartition]) -> None:
        if not keys:
            return
        svc = self.service
        svc.stats["revoked_partitions"] += len(keys)
        try:
            offsets = svc._release(keys)
            if offsets:
                svc._commit_offsets(offsets)
        except Exception as exc:  # any failure: the next owner re-answers from the commit
            log.warning(
                "revoke of partitions %s not drained (%s): the next owner answers frames "
                "after the last commit again",
                sorted(p for _, p in keys),
                exc,
            )
        finally:
            svc._forget(keys)

    def on_lost(self, keys: set[TopicPartition]) -> None:
        """Membership already gone: committing is impossible, so answer nothing here either."""
        log.warning("lost partitions %s; their next owner answers them", sorted(p for _, p in keys))
        self.service._forget(keys)

    def on_assigned(self, keys: set[TopicPartition]) -> None:
        svc = self.service
        svc.assigned |= keys
        log.info("assigned partitions %s", sorted(p for _, p in svc.assigned))
