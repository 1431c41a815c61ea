"""The rebalance listener: what it does to the loop on revocation, and the one private
kafka-python attribute it needs (``io_loop_sleep``)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from anomaly.stream.checkpoint import Checkpoint
from anomaly.stream.rebalance import RebalanceListener, io_loop_sleep


class FakeMember:
    """A loop with polled, unscored records and nothing to commit."""

    def __init__(self) -> None:
        self.config: Any = None
        self.checkpoint = Checkpoint()
        self.output: Any = None
        self.pending = ["r1", "r2"]
        self.revoked: list[TopicPartition] | None = None
        self.assigned: list[TopicPartition] | None = None

    @property
    def consumer(self) -> Any:
        raise AssertionError("nothing to commit: the consumer is not needed")

    def drop_pending(self) -> int:
        dropped, self.pending = len(self.pending), []
        return dropped

    def count_commit(self) -> None:
        raise AssertionError("nothing was committed")

    def on_revoked(self, revoked: list[TopicPartition]) -> None:
        self.revoked = revoked

    def on_assigned(self, assigned: list[TopicPartition]) -> None:
        self.assigned = assigned


def test_revocation_drops_the_unscored_records_through_the_member_interface():
    member = FakeMember()
    listener = RebalanceListener(member)
    tp = TopicPartition("in", 0)
    asyncio.run(listener.on_partitions_revoked([tp]))
    assert member.pending == [] and member.revoked == [tp]
    asyncio.run(listener.on_partitions_assigned([tp]))
    assert member.assigned == [tp]


@pytest.mark.kafka
def test_kafka_python_still_offers_the_io_loop_sleep_the_listener_awaits(kafka_bootstrap):
    """Fails when a kafka-python release drops ``consumer._net.sleep``: the listener's wait
    for in-flight outputs must then find another awaitable sleep on kafka-python's IO loop."""
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    try:
        assert callable(getattr(getattr(consumer, "_net", None), "sleep", None))
        assert io_loop_sleep(consumer, 0.0) is not None
    finally:
        consumer.close()
