"""Helpers for tests against the real broker: produce, read a whole topic, committed offsets,
scrape /metrics, and run ``anomaly serve`` as a real subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from anomaly.demo.broker import free_port

FAST_GROUP = ["--session-timeout-ms", "4000", "--heartbeat-interval-ms", "500"]


def produce(bootstrap: str, topic: str, items: Iterable[tuple[bytes | None, bytes | None]]) -> int:
    """Send (key, value) pairs and wait for every acknowledgement; returns how many."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    futures = [producer.send(topic, key=key, value=value) for key, value in items]
    producer.flush()
    for future in futures:
        future.get(timeout=10)
    producer.close()
    return len(futures)


def read_topic(
    bootstrap: str, topic: str, expect: int | None = None, timeout: float = 30.0, idle: float = 1.5
) -> list[Any]:
    """Every record of ``topic`` from the beginning (no group): until ``expect`` records have
    arrived, or, without ``expect``, until nothing new came for ``idle`` seconds."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    deadline = time.monotonic() + timeout
    partitions = None
    while not partitions and time.monotonic() < deadline:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            time.sleep(0.2)
    if not partitions:
        consumer.close()
        return []
    consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
    consumer.seek_to_beginning()
    records: list[Any] = []
    last_new = time.monotonic()
    while time.monotonic() < deadline:
        batch = consumer.poll(timeout_ms=200)
        for part in batch.values():
            records.extend(part)
        if batch:
            last_new = time.monotonic()
        if expect is not None and len(records) >= expect:
            break
        if expect is None and time.monotonic() - last_new > idle:
            break
    consumer.close()
    return records


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
