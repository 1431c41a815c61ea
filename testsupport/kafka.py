"""Helpers for tests against the real broker: produce (``anomaly.topics.produce``), read a
whole topic (everything, or only committed transactions), committed offsets, scrape /metrics,
and run ``anomaly serve`` as a real subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import Fetcher
from kafka.record.memory_records import MemoryRecords
from prometheus_client.parser import text_string_to_metric_families

from anomaly.demo.broker import create_topic, free_port
from anomaly.topics import read_records
from testsupport.data import unique_name

FAST_GROUP = ["--session-timeout-ms", "4000", "--heartbeat-interval-ms", "500"]


def read_topic(
    bootstrap: str,
    topic: str,
    expect: int | None = None,
    timeout: float = 30.0,
    idle: float = 1.5,
    committed_only: bool = False,
    **kafka: Any,
) -> list[Any]:
    """Every record of ``topic`` from the beginning (``anomaly.topics.read_records``): until
    ``expect`` records have arrived, or, without ``expect``, until the topic is read to its
    end and stays quiet for ``idle`` seconds. A topic not created yet (the service creates
    its outputs on the first write) reads as empty.

    ``committed_only``: the ``read_committed`` view, records of aborted or still open
    transactions left out (see ``transaction_markers``)."""
    options = {"expect": expect, "timeout_s": timeout, "idle_s": idle, "missing_ok": True}
    if not committed_only:
        return read_records(bootstrap, topic, **options, **kafka)
    kafka["isolation_level"] = "read_committed"
    with transaction_markers() as markers:
        records = read_records(bootstrap, topic, **options, **kafka)
    return markers.committed(records)


class TransactionMarkers:
    """Transactional batches and commit/abort markers a consumer fetched, per partition."""

    def __init__(self) -> None:
        # (topic, partition, base offset) -> (last offset, producer id, is control, is abort)
        self.batches: dict[tuple[str, int, int], tuple[int, int, bool, bool]] = {}

    def scan(self, tp: TopicPartition, records: MemoryRecords) -> None:
        """Note every transactional batch and marker of one fetched partition buffer."""
        view = MemoryRecords(records._buffer)
        batch = view.next_batch()
        while batch is not None:
            if batch.magic == 2 and batch.has_producer_id() and batch.is_transactional:
                abort = bool(batch.is_control_batch and next(batch).abort)
                key = (tp.topic, tp.partition, batch.base_offset)
                self.batches[key] = (
                    batch.last_offset,
                    batch.producer_id,
                    batch.is_control_batch,
                    abort,
                )
            batch = view.next_batch()

    def aborted(self) -> set[tuple[str, int, int]]:
        """(topic, partition, offset) of every record whose transaction was aborted."""
        out: set[tuple[str, int, int]] = set()
        open_: dict[tuple[str, int, int], list[tuple[int, int]]] = {}
        for (topic, partition, base), (last, producer, control, abort) in sorted(
            self.batches.items()
        ):
            key = (topic, partition, producer)
            if not control:
                open_.setdefault(key, []).append((base, last))
                continue
            for first, end in open_.pop(key, []):
                if abort:
                    out.update((topic, partition, o) for o in range(first, end + 1))
        return out

    def committed(self, records: list[Any]) -> list[Any]:
        """``records`` without those of aborted transactions."""
        aborted = self.aborted()
        return [r for r in records if (r.topic, r.partition, r.offset) not in aborted]


@contextlib.contextmanager
def transaction_markers() -> Iterator[TransactionMarkers]:
    """Record the transaction markers of every fetch in this process while the block runs.

    A Kafka broker sends a read_committed consumer the list of aborted transactions with
    each fetch; Tansu 0.6 writes the commit/abort markers but sends an empty list, so its
    read_committed view hides open transactions (last stable offset) yet shows aborted
    ones. This rebuilds the broker's abort index from the markers the consumer fetched, so
    tests can reconcile the view a real read_committed consumer gets.
    """
    markers = TransactionMarkers()
    original = Fetcher.PartitionRecords.__init__

    def spy(
        self: Any, fetch_offset: int, tp: TopicPartition, records: Any, *a: Any, **k: Any
    ) -> None:
        markers.scan(tp, records)
        original(self, fetch_offset, tp, records, *a, **k)

    Fetcher.PartitionRecords.__init__ = spy
    try:
        yield markers
    finally:
        Fetcher.PartitionRecords.__init__ = original


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    """The group's committed offset per partition (None where it never committed)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        consumer.close(autocommit=False)


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it is truthy; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def scrape(url: str) -> dict[str, float]:
    """/metrics as {'name{label=value,...}': value}; empty when the server does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return {}
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def metric_sum(samples: dict[str, float], name: str) -> float:
    """Sum of a metric over all its label sets."""
    return sum(v for k, v in samples.items() if k.split("{", 1)[0] == name)


class ServeProcess:
    """``python -m anomaly.cli serve ...`` as a child process with its own metrics port."""

    def __init__(self, bootstrap: str, args: list[str], log_path: Path):
        self.port = free_port()
        self.log_path = log_path
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "anomaly.cli", "serve", "--bootstrap-servers", bootstrap]
        command += ["--metrics-port", str(self.port), *FAST_GROUP, *args]
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in wait()
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def metrics(self) -> dict[str, float]:
        return scrape(self.url)

    def consumed(self) -> float:
        return metric_sum(self.metrics(), "anomaly_records_consumed_total")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def new_topics(bootstrap: str, partitions: int = 1, prefix: str = "t") -> dict[str, str]:
    """Fresh input (created with ``partitions``), alert, DLQ and scores topics and a group
    name, as ``serve`` settings."""
    suffix = unique_name(prefix)
    topics = {
        "input_topic": f"in-{suffix}",
        "alert_topic": f"alerts-{suffix}",
        "dlq_topic": f"dlq-{suffix}",
        "scores_topic": f"scores-{suffix}",
        "group": f"group-{suffix}",
    }
    create_topic(bootstrap, topics["input_topic"], partitions=partitions)
    return topics
