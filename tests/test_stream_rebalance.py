"""A partition that a rebalance hands back to the same member is read again from where the
revocation left it: kafka-python keeps such a partition's position, past the records the
revocation dropped (polled, unscored) or abandoned (outputs not committed)."""

from __future__ import annotations

from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from anomaly.stream.config import load_serve_config
from anomaly.stream.rebalance import RebalanceListener
from anomaly.stream.service import StreamService
from tests.test_stream_batch import REQUIRED, CountingScorer

KEPT, MOVED = TopicPartition("in", 0), TopicPartition("in", 1)


class FakeConsumer:
    """Holds ``assigned`` and records seeks."""

    def __init__(self, assigned: list[TopicPartition]) -> None:
        self.assigned = set(assigned)
        self.seeks: dict[TopicPartition, int] = {}

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp] = offset


def record(tp: TopicPartition, offset: int) -> ConsumerRecord:
    return ConsumerRecord(tp.topic, tp.partition, -1, offset, 0, 0, b"k", b"{}", [], None, 1, 2, -1)


def service_with(consumer: FakeConsumer) -> StreamService:
    return StreamService(load_serve_config(REQUIRED, env={}), CountingScorer(), consumer=consumer)


def test_dropped_records_of_a_kept_partition_are_read_again():
    consumer = FakeConsumer([KEPT])
    service = service_with(consumer)
    service.pending = [record(KEPT, 10), record(KEPT, 11), record(MOVED, 5)]
    assert service.drop_pending() == 3
    # the poll that finished the rebalance read on from the kept position: dropped, re-read
    polled = service._rewind_kept({KEPT: [record(KEPT, 12)]})
    assert polled == {} and consumer.seeks == {KEPT: 10}  # the moved one: its new owner's
    assert service._rewind_kept({KEPT: [record(KEPT, 10)]}) == {KEPT: [record(KEPT, 10)]}


def test_abandoned_outputs_of_a_kept_partition_are_scored_again():
    consumer = FakeConsumer([KEPT, MOVED])
    service = service_with(consumer)
    service.checkpoint.track([record(KEPT, 7), record(KEPT, 8), record(MOVED, 3)])
    RebalanceListener(service)._abandon("exactly_once")
    assert service.checkpoint.empty
    service._rewind_kept({})
    assert consumer.seeks == {KEPT: 7, MOVED: 3}
