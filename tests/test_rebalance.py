"""The rebalance listener: what it does to the loop on revocation, and the one private
kafka-python attribute it needs (``io_loop_sleep``)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from typing import Any

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition

from anomaly.bundle.bundle import Bundle
from anomaly.stream.checkpoint import Checkpoint, ExitCode
from anomaly.stream.rebalance import RebalanceListener, io_loop_sleep
from anomaly.topics import produce
from tests.test_checkpoint import Running, config_for, records
from testsupport.kafka import committed, new_topics, read_topic, wait_until


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


class Throttled:
    """The real bundle, ``delay_s`` slower per batch: a member that is busy by construction."""

    def __init__(self, bundle: Bundle, delay_s: float):
        self._bundle = bundle
        self.delay_s = delay_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bundle, name)

    def score_components(self, X: np.ndarray) -> Any:
        time.sleep(self.delay_s)
        return self._bundle.score_components(X)


@pytest.mark.kafka
def test_a_member_busy_at_revocation_commits_what_it_handled(kafka_bootstrap, tiny_bundle, caplog):
    """The revocation commit path, reached by design: a backlog keeps every poll full (a
    quiet input would checkpoint), the commit interval outlasts the test and each batch
    takes 30 ms more, so when a second member joins, the first one holds handled,
    uncommitted records. It must commit them in the listener (an awaited commit), so that
    the new owner of its partitions starts after them: no record scored twice, none lost."""
    caplog.set_level(logging.INFO, logger="anomaly.stream.rebalance")
    topics = new_topics(kafka_bootstrap, partitions=4)
    total = produce(kafka_bootstrap, topics["input_topic"], records(6000, seed=9))
    config = config_for(
        kafka_bootstrap, tiny_bundle, topics, max_batch=50, commit_interval_ms=600_000
    )
    first = Running(config, Throttled(Bundle.load(tiny_bundle), 0.03))
    second = None
    try:
        assert wait_until(lambda: first.service.records_consumed >= 100, 60)
        second = Running(config, Bundle.load(tiny_bundle))
        members = [first.service, second.service]
        assert wait_until(lambda: all(m.assigned_partitions for m in members), 60)
        assert wait_until(lambda: sum(m.records_consumed for m in members) >= total, 120)
        assert wait_until(lambda: all(m.uncommitted == 0 for m in members), 30)
    finally:
        statuses = [first.stop(), second.stop() if second else None]
    assert statuses == [ExitCode.OK, ExitCode.OK]
    events = [r for r in caplog.records if r.name == "anomaly.stream.rebalance"]
    busy = [r.uncommitted for r in events if getattr(r, "event", "") == "revoked"]
    assert max(busy) > 0, busy  # the precondition, by construction
    commits = [r.records for r in events if getattr(r, "event", "") == "revoke_commit"]
    assert commits and min(commits) > 0 and max(busy) in commits
    assert not [r for r in events if getattr(r, "event", "") == "revoke_abandon"]
    scores = read_topic(kafka_bootstrap, topics["scores_topic"])
    sources = Counter(
        (json.loads(m.value)["source"]["partition"], json.loads(m.value)["source"]["offset"])
        for m in scores
    )
    assert len(sources) == total and max(sources.values()) == 1
    ends = Counter(r.partition for r in read_topic(kafka_bootstrap, topics["input_topic"], total))
    assert committed(kafka_bootstrap, topics["group"], topics["input_topic"], 4) == dict(ends)
