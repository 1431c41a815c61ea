"""Reading a topic back and producing to one, without a consumer group.

The one topic reader and the one producer helper: refits and drift checks read what
``anomaly serve`` published (``anomaly.monitoring``), the demo feeds its broker and reads the
alerts back, and the test and benchmark scaffolding (``testsupport``) does both.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from anomaly.errors import AnomalyError


def read_records(
    bootstrap_servers: str,
    topic: str,
    *,
    expect: int | None = None,
    last: int | None = None,
    idle_s: float = 1.5,
    timeout_s: float = 120.0,
    missing_ok: bool = False,
    **kafka: Any,
) -> list[Any]:
    """Every record of ``topic`` (or about the ``last`` per partition), as kafka-python
    ``ConsumerRecord`` objects.

    Stops once ``expect`` records arrived (records still being produced are waited for); without
    ``expect``, once each partition's end offset (read at the start) is passed and the topic
    stayed quiet ``idle_s`` (brokers may report an end offset short by a batch, so the end is
    found by reading; under ``read_committed`` an open transaction can hold the readable end
    below the end offset, so there a quiet spell of ten times ``idle_s``, at least 10 s, also
    ends the read); at ``timeout_s`` in any case. ``kafka``: further consumer settings
    (``isolation_level``, security). A broker that cannot be reached is an ``AnomalyError``,
    and so is a topic that does not exist unless ``missing_ok`` (an output topic that nothing
    was written to yet, which the broker creates on the first write, then reads as empty).
    """
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    settings = {"request_timeout_ms": 30000, "max_poll_records": 5000, **kafka}
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            **settings,
        )
    except KafkaError as exc:
        raise AnomalyError(f"cannot reach Kafka at {bootstrap_servers}: {exc}") from None
    try:
        partitions = None
        # expected records may still be on their way, and their topic with them
        deadline = time.monotonic() + (10.0 if expect is None else timeout_s)
        while not partitions and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                time.sleep(0.2)
        if not partitions:
            if missing_ok:
                return []
            raise AnomalyError(f"topic {topic!r} not found on {bootstrap_servers}")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        begin = consumer.beginning_offsets(tps)
        end = consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, begin[tp] if last is None else max(begin[tp], end[tp] - last))
        # read_committed: an open transaction may hold the readable end below the end offset
        # for as long as it stays open, so there a longer quiet spell also ends the read
        settle_s = (
            max(10 * idle_s, 10.0)
            if settings.get("isolation_level") == "read_committed"
            else float("inf")
        )
        records: list[Any] = []
        quiet_since = time.monotonic()
        stop_at = time.monotonic() + timeout_s
        while time.monotonic() < stop_at:
            batch = consumer.poll(timeout_ms=200)
            for part in batch.values():
                records.extend(part)
            if expect is not None:
                if len(records) >= expect:
                    break
                continue
            if batch:
                quiet_since = time.monotonic()
                continue
            quiet = time.monotonic() - quiet_since
            if quiet >= settle_s or (
                quiet >= idle_s and all(consumer.position(tp) >= end[tp] for tp in tps)
            ):
                break
        return records
    except KafkaError as exc:
        raise AnomalyError(f"reading {topic!r} from {bootstrap_servers} failed: {exc}") from None
    finally:
        consumer.close()


def produce(
    bootstrap_servers: str,
    topic: str,
    items: Iterable[tuple[bytes | None, bytes | None]],
    *,
    rate: float | None = None,
    burst: int = 1,
    stop: threading.Event | None = None,
    raise_on_error: bool = True,
    **kafka: Any,
) -> int:
    """Send (key, value) pairs and wait until every one is acknowledged or failed; returns how
    many were sent.

    ``rate``: records per second on average, sent in bursts of ``burst`` at full speed;
    ``stop``: an event that ends the sending early. ``raise_on_error`` (default): the first
    failed delivery is raised; a load generator that must outlive a restarting broker turns it
    off and counts what arrived by reading the topic back. ``kafka``: producer settings over
    ``acks="all"`` and ``linger_ms=5``.
    """
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap_servers, **{"acks": "all", "linger_ms": 5, **kafka}
    )
    failures: list[BaseException] = []
    began = time.perf_counter()
    sent = 0
    try:
        for i, (key, value) in enumerate(items):
            if stop is not None and stop.is_set():
                break
            if rate:
                delay = began + (i // burst) * burst / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            producer.send(topic, key=key, value=value).add_errback(failures.append)
            sent += 1
        producer.flush(timeout=120)
    finally:
        producer.close()
    if failures and raise_on_error:
        raise failures[0]
    return sent
