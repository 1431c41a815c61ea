"""Partition revocation and assignment for the loop.

kafka-python (3.x) runs rebalance listeners on its IO thread, the one that also sends
heartbeats, while the loop thread waits inside ``poll`` (or ``close``); a blocking consumer
call there raises. So this listener is asynchronous: on revocation it drops the records
polled but not yet scored (the next owner reads them), waits a bounded time for the outputs
already handed to the producer with kafka-python's own awaitable sleep (heartbeats go on),
then commits what was delivered and awaits that commit, a synchronous commit in effect.
Undelivered output is not committed; with exactly-once the open transaction is aborted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from kafka import AsyncConsumerRebalanceListener, TopicPartition
from kafka.errors import KafkaError

if TYPE_CHECKING:
    from anomaly.stream.service import StreamService

log = logging.getLogger("anomaly.stream.service")


class RebalanceListener(AsyncConsumerRebalanceListener):
    """Finishes or abandons the pending checkpoint when partitions go, then tells the loop."""

    def __init__(self, service: StreamService):
        self.service = service

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self._revoke(list(revoked), lost=False)

    async def on_partitions_lost(self, lost: Sequence[TopicPartition]) -> None:
        await self._revoke(list(lost), lost=True)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.service.on_assigned(list(assigned))

    async def _revoke(self, revoked: list[TopicPartition], lost: bool) -> None:
        service = self.service
        log.info(
            "partitions lost" if lost else "partitions revoked",
            extra={
                "event": "lost" if lost else "revoked",
                "partitions": [f"{tp.topic}-{tp.partition}" for tp in revoked],
                "dropped_unscored": len(service.pending),
                "uncommitted": service.checkpoint.records,
            },
        )
        service.pending = []  # neither scored nor committed: the next owner reads them
        if not service.checkpoint.empty:
            if lost or service.output.transactional:
                self._abandon("lost" if lost else "exactly_once")
            else:
                await self._commit()
        service.on_revoked(revoked)

    async def _commit(self) -> None:
        """Wait (yielding to heartbeats) for the outputs in flight, then commit and await it."""
        service = self.service
        checkpoint = service.checkpoint
        config = service.config
        deadline = time.monotonic() + min(config.flush_timeout_s, config.session_timeout_ms / 2000)
        while not checkpoint.settled() and time.monotonic() < deadline:
            # kafka-python's awaitable sleep on its IO loop: heartbeats run meanwhile.
            await service.consumer._net.sleep(0.01)
        if not checkpoint.settled() or checkpoint.failure() is not None:
            self._abandon("undelivered")
            return
        records = checkpoint.records
        try:
            await service.consumer.commit_async(checkpoint.offsets())
        except KafkaError as exc:
            log.warning(
                "commit on revocation failed; the new owner re-reads those records",
                extra={"event": "commit_failed", "error": repr(exc)},
            )
        else:
            service.metrics.commits.inc()
            service.metrics.last_commit.set(time.time())
            log.info(
                "committed on revocation", extra={"event": "revoke_commit", "records": records}
            )
        checkpoint.reset()

    def _abandon(self, why: str) -> None:
        service = self.service
        log.warning(
            "handing the partitions over without committing; the new owner re-reads them",
            extra={
                "event": "revoke_abandon",
                "reason": why,
                "records": service.checkpoint.records,
            },
        )
        service.output.abort()
        service.checkpoint.reset()
