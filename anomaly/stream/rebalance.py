"""Partition revocation and assignment for the loop.

kafka-python (3.x) runs rebalance listeners on its IO thread, the one that also sends
heartbeats, while the loop thread waits inside ``poll`` (or ``close``); a blocking consumer
call there raises. So this listener is asynchronous: on revocation it drops the records
polled but not yet scored (the next owner reads them), waits a bounded time for the outputs
already handed to the producer with kafka-python's own awaitable sleep (heartbeats go on),
then commits what was delivered and awaits that commit, a synchronous commit in effect.
Undelivered output is not committed; with exactly-once the open transaction is aborted.

The listener reaches the loop only through :class:`Member` (``StreamService`` provides it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, Protocol

from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from anomaly.stream.checkpoint import Checkpoint
from anomaly.stream.config import ServeConfig
from anomaly.stream.output import Output

log = logging.getLogger(__name__)


class Member(Protocol):
    """What the listener needs from the consumer-group member it serves."""

    config: ServeConfig
    checkpoint: Checkpoint
    output: Output

    @property
    def consumer(self) -> KafkaConsumer:
        """The input consumer."""

    def drop_pending(self) -> int:
        """Forget the records polled but not scored (the next owner reads them); how many."""

    def reread(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Read these partitions again from these offsets should they stay with this member."""

    def count_commit(self) -> None:
        """Count a commit in the metrics."""

    def on_revoked(self, revoked: list[TopicPartition]) -> None:
        """The partitions are gone."""

    def on_assigned(self, assigned: list[TopicPartition]) -> None:
        """New partitions arrived."""


def io_loop_sleep(consumer: KafkaConsumer, seconds: float) -> Awaitable[Any]:
    """An awaitable sleep on kafka-python's IO loop, during which heartbeats go on.

    kafka-python 3 runs rebalance listeners as coroutines on its own IO kernel, not asyncio:
    ``asyncio.sleep`` cannot be awaited there and ``time.sleep`` would stop the heartbeats.
    The only awaitable sleep is its network selector's, reached through the private
    ``consumer._net``; tests/test_rebalance.py fails if a kafka-python release removes it.
    """
    return consumer._net.sleep(seconds)


class RebalanceListener(AsyncConsumerRebalanceListener):
    """Finishes or abandons the pending checkpoint when partitions go, then tells the loop."""

    def __init__(self, member: Member):
        self.member = member

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self._revoke(list(revoked), lost=False)

    async def on_partitions_lost(self, lost: Sequence[TopicPartition]) -> None:
        await self._revoke(list(lost), lost=True)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.member.on_assigned(list(assigned))

    async def _revoke(self, revoked: list[TopicPartition], lost: bool) -> None:
        member = self.member
        uncommitted = member.checkpoint.records
        dropped = member.drop_pending()  # neither scored nor committed: the next owner reads them
        log.info(
            "partitions lost" if lost else "partitions revoked",
            extra={
                "event": "lost" if lost else "revoked",
                "partitions": [f"{tp.topic}-{tp.partition}" for tp in revoked],
                "dropped_unscored": dropped,
                "uncommitted": uncommitted,
            },
        )
        if not member.checkpoint.empty:
            if lost or member.output.transactional:
                self._abandon("lost" if lost else "exactly_once")
            else:
                await self._commit()
        member.on_revoked(revoked)

    async def _commit(self) -> None:
        """Wait (yielding to heartbeats) for the outputs in flight, then commit and await it."""
        member = self.member
        checkpoint = member.checkpoint
        config = member.config
        deadline = time.monotonic() + min(config.flush_timeout_s, config.session_timeout_ms / 2000)
        while not checkpoint.settled() and time.monotonic() < deadline:
            await io_loop_sleep(member.consumer, 0.01)
            member.output.poll()  # librdkafka reports deliveries only when asked
        if not checkpoint.settled() or checkpoint.failure() is not None:
            self._abandon("undelivered")
            return
        records = checkpoint.records
        try:
            await member.consumer.commit_async(checkpoint.offsets())
        except KafkaError as exc:
            log.warning(
                "commit on revocation failed; the new owner re-reads those records",
                extra={"event": "commit_failed", "error": repr(exc)},
            )
        else:
            member.count_commit()
            log.info(
                "committed on revocation", extra={"event": "revoke_commit", "records": records}
            )
        checkpoint.reset()

    def _abandon(self, why: str) -> None:
        member = self.member
        log.warning(
            "handing the partitions over without committing; the new owner re-reads them",
            extra={
                "event": "revoke_abandon",
                "reason": why,
                "records": member.checkpoint.records,
            },
        )
        member.output.abort()
        member.reread(member.checkpoint.first_offsets)
        member.checkpoint.reset()
