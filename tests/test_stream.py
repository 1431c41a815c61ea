"""`anomaly serve` end to end against the real broker on 127.0.0.1.

In-process services (a thread) where the test is about records; real `anomaly serve`
subprocesses where it is about processes (SIGKILL, SIGTERM, two group members).
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import threading
from collections import Counter
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from anomaly.bundle.bundle import Bundle
from anomaly.demo.broker import create_topic
from anomaly.stream.alerts import load_schema
from anomaly.stream.config import load_serve_config
from anomaly.stream.metrics import Metrics, MetricsServer
from anomaly.stream.service import StreamService
from anomaly.topics import produce
from testsupport.data import FEATURES, make_tabular_data, unique_name
from testsupport.kafka import (
    ServeProcess,
    committed,
    metric_sum,
    read_topic,
    scrape,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.xdist_group("broker_faults")]

POISON = {
    "undecodable": b"\x00\xffnot json at all",
    "not_object": b"[1, 2, 3]",
    "missing_field": json.dumps({"f0": 1.0, "f1": 2.0}).encode(),
    "extra_field": json.dumps({**dict.fromkeys(FEATURES, 1.0), "pan": "4111111111111111"}).encode(),
    "wrong_type": json.dumps({**dict.fromkeys(FEATURES, 1.0), "f2": "1.0"}).encode(),
    "non_finite": b'{"f0": NaN, "f1": 1, "f2": 1, "f3": 1, "amount": 1}',
    "oversized": json.dumps(
        {**dict.fromkeys(FEATURES, 1.0), "id": "x" * 250, "pad": "y" * 3000}
    ).encode(),
    "too_deep": b'{"f0": ' + b"[" * 50 + b"]" * 50 + b"}",
    "empty": None,
}


def records_for(rows: np.ndarray, prefix: str) -> list[tuple[bytes, bytes]]:
    """(key, JSON value) per row; the id doubles as the key."""
    out = []
    for i, row in enumerate(rows.tolist()):
        record_id = f"{prefix}-{i}"
        body = {**dict(zip(FEATURES, row, strict=True)), "id": record_id}
        out.append((record_id.encode(), json.dumps(body).encode()))
    return out


def dataset(seed: int = 0, n_normal: int = 600, n_anomalies: int = 60) -> np.ndarray:
    normal, anomalies = make_tabular_data(n_normal, n_anomalies, seed)
    rows = np.vstack([normal, anomalies])
    rows[:, 4] = np.abs(rows[:, 4]) * 100
    return rows[np.random.default_rng(seed).permutation(len(rows))]


def config_for(bootstrap: str, bundle: Path, topics: dict[str, str], **extra: object):
    flags = {
        **topics,
        "bundle": str(bundle),
        "bootstrap_servers": bootstrap,
        "session_timeout_ms": 4000,
        "heartbeat_interval_ms": 500,
        "max_record_bytes": 2048,
        "max_batch": 64,
        "commit_interval_ms": 200,
        **extra,
    }
    return load_serve_config(flags, env={})


def new_topics(partitions: int, bootstrap: str, scores: bool = True) -> dict[str, str]:
    topics = {
        "input_topic": unique_name("in"),
        "alert_topic": unique_name("alerts"),
        "dlq_topic": unique_name("dlq"),
        "group": unique_name("group"),
    }
    if scores:
        topics["scores_topic"] = unique_name("scores")
    create_topic(bootstrap, topics["input_topic"], partitions=partitions)
    return topics


class ServiceThread:
    """A StreamService with a real metrics server on a free port, running in a thread."""

    def __init__(self, config, bundle: Bundle):
        self.metrics = Metrics()
        self.server = MetricsServer(self.metrics, "127.0.0.1", 0).start()
        self.service = StreamService(config, bundle, self.metrics)
        self.status: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.status = self.service.run()

    def stop(self) -> int | None:
        self.service.stop()
        self.thread.join(30)
        self.server.stop()
        return self.status


def source_of(record) -> tuple[int, int]:
    return record.partition, record.offset


def test_every_record_is_scored_or_dead_lettered_and_each_anomaly_alerted_once(
    kafka_bootstrap, tiny_bundle
):
    topics = new_topics(3, kafka_bootstrap)
    rows = dataset(seed=1)
    good = records_for(rows, "r")
    poison = [(f"bad-{reason}".encode(), value) for reason, value in POISON.items()]
    items = good[:300] + poison + good[300:]
    produce(kafka_bootstrap, topics["input_topic"], items)
    total = len(items)

    bundle = Bundle.load(tiny_bundle)
    runner = ServiceThread(config_for(kafka_bootstrap, tiny_bundle, topics), bundle)
    try:
        assert wait_until(lambda: runner.service.records_consumed >= total, 60)
        assert wait_until(lambda: runner.service.uncommitted == 0, 10)
        samples = scrape(runner.server.url)  # over real HTTP while the service runs
    finally:
        assert runner.stop() == 0

    inputs = read_topic(kafka_bootstrap, topics["input_topic"], expect=total)
    scores = read_topic(kafka_bootstrap, topics["scores_topic"], expect=len(good))
    dead = read_topic(kafka_bootstrap, topics["dlq_topic"], expect=len(poison))
    alerts = read_topic(kafka_bootstrap, topics["alert_topic"])
    by_source = {source_of(r): r for r in inputs}
    assert len(by_source) == total

    # Every consumed record ends scored or dead-lettered: exactly once each here (no crash).
    scored_sources = [
        tuple(json.loads(m.value)["source"][k] for k in ("partition", "offset")) for m in scores
    ]
    dead_sources = [
        (
            int(dict(m.headers)["__connect.errors.partition"]),
            int(dict(m.headers)["__connect.errors.offset"]),
        )
        for m in dead
    ]
    assert len(scored_sources) == len(good) and len(dead_sources) == len(poison)
    assert set(scored_sources) | set(dead_sources) == set(by_source)
    assert not set(scored_sources) & set(dead_sources)

    # Each poison kind is in the DLQ with its reason, original bytes and key, source headers.
    reasons = {}
    for message in dead:
        headers = dict(message.headers)
        origin = by_source[
            (int(headers["__connect.errors.partition"]), int(headers["__connect.errors.offset"]))
        ]
        assert message.value == origin.value and message.key == origin.key
        assert headers["__connect.errors.topic"].decode() == topics["input_topic"]
        assert headers["__connect.errors.exception.class.name"] == b"anomaly.errors.RecordError"
        reasons[message.key.decode().removeprefix("bad-")] = headers[
            "anomaly.errors.reason"
        ].decode()
    assert reasons == {reason: reason for reason in POISON}

    # Every anomaly (score > threshold, as the service scored it) has exactly one alert.
    score_messages = [json.loads(m.value) for m in scores]
    expected = {m["alert_id"] for m in score_messages if m["score"] > m["threshold"]}
    assert expected, "the tiny model flags some of the injected anomalies"
    alert_messages = [json.loads(m.value) for m in alerts]
    ids = Counter(a["alert_id"] for a in alert_messages)
    assert set(ids) == expected and max(ids.values()) == 1
    schema = load_schema("alert")
    for message, alert in zip(alerts, alert_messages, strict=True):
        jsonschema.validate(alert, schema)
        origin = by_source[(alert["source"]["partition"], alert["source"]["offset"])]
        assert message.key == origin.key and alert["record_id"] == origin.key.decode()
        assert alert["fields"] == {}
    flagged_ids = {a["record_id"] for a in alert_messages}
    offline = bundle.score_components(rows).score
    offline_flagged = {f"r-{i}" for i in np.flatnonzero(offline > bundle.threshold)}
    assert len(flagged_ids ^ offline_flagged) <= 1  # float32 ties at the threshold aside

    # /metrics over HTTP agrees with the test's own counts.
    assert samples[f"anomaly_records_consumed_total{{topic={topics['input_topic']}}}"] == total
    assert samples["anomaly_records_scored_total{}"] == len(good)
    assert metric_sum(samples, "anomaly_records_dead_lettered_total") == len(poison)
    for reason in POISON:
        assert samples[f"anomaly_records_dead_lettered_total{{reason={reason}}}"] == 1
    assert samples["anomaly_alerts_total{}"] == len(alert_messages)
    assert samples["anomaly_scores_published_total{}"] == len(good)
    assert samples["anomaly_score_count{}"] == len(good)
    assert samples["anomaly_batch_records_sum{}"] == total
    assert samples["anomaly_end_to_end_latency_seconds_count{}"] == len(good)
    assert samples["anomaly_threshold{}"] == pytest.approx(bundle.threshold)
    assert samples["anomaly_assigned_partitions{}"] == 3 and samples["anomaly_ready{}"] == 1
    assert samples["anomaly_commits_total{}"] >= 1

    # After the drain, the group's commits cover every record.
    per_partition = Counter(r.partition for r in inputs)
    assert committed(kafka_bootstrap, topics["group"], topics["input_topic"], 3) == {
        p: per_partition[p] for p in range(3)
    }


def test_threshold_refit_is_picked_up_live(kafka_bootstrap, tiny_bundle, tmp_path, caplog):
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle_dir)
    topics = new_topics(1, kafka_bootstrap, scores=False)
    rows = dataset(seed=2, n_normal=200, n_anomalies=0)
    first, second = records_for(rows[:100], "a"), records_for(rows[100:], "b")
    config = config_for(kafka_bootstrap, bundle_dir, topics, threshold_refresh_s=0.3)
    served = Bundle.load(bundle_dir)
    old = served.threshold
    runner = ServiceThread(config, served)
    caplog.set_level(logging.INFO, logger="anomaly.stream.threshold_reload")
    try:
        produce(kafka_bootstrap, topics["input_topic"], first)
        assert wait_until(lambda: runner.service.records_consumed >= 100, 60)
        # Refit from another process' point of view: a second Bundle object appends a threshold
        # that flags most normal records, as `anomaly threshold` does.
        writer = Bundle.load(bundle_dir)
        new = float(np.quantile(writer.score_components(rows).score, 0.2))
        writer.append_threshold({"method": "quantile", "value": new, "note": "test refit"})
        assert wait_until(
            lambda: scrape(runner.server.url).get("anomaly_threshold_reloads_total{}") == 1, 10
        )
        samples = scrape(runner.server.url)
        assert samples["anomaly_threshold{}"] == pytest.approx(new)
        assert samples["anomaly_threshold_version{}"] == 2
        produce(kafka_bootstrap, topics["input_topic"], second)
        assert wait_until(lambda: runner.service.records_consumed >= 200, 30)
    finally:
        assert runner.stop() == 0
    alerts = [json.loads(m.value) for m in read_topic(kafka_bootstrap, topics["alert_topic"])]
    late = [a for a in alerts if a["record_id"].startswith("b-")]
    assert len(late) >= 50, "the lowered threshold flags most of the second batch"
    assert {a["threshold_version"] for a in late} == {2}
    assert all(a["threshold"] == pytest.approx(new) for a in late)
    assert all(
        a["threshold"] == pytest.approx(old) for a in alerts if a["record_id"].startswith("a-")
    )
    assert "threshold reloaded" in caplog.text


def scored_sources(bootstrap: str, topic: str) -> list[tuple[int, int]]:
    return [
        tuple(json.loads(m.value)["source"][k] for k in ("partition", "offset"))
        for m in read_topic(bootstrap, topic, idle=2.0)
    ]


def serve_args(bundle: Path, topics: dict[str, str], *extra: str) -> list[str]:
    args = ["--bundle", str(bundle)]
    for name, value in topics.items():
        args += ["--" + name.replace("_", "-"), value]
    return args + list(extra)


def test_sigkill_mid_stream_then_restart_loses_nothing(kafka_bootstrap, tiny_bundle, tmp_path):
    topics = new_topics(2, kafka_bootstrap)
    rows = np.vstack([dataset(seed=s, n_normal=1000, n_anomalies=20) for s in range(10)])
    total = produce(kafka_bootstrap, topics["input_topic"], records_for(rows, "k"))
    args = serve_args(tiny_bundle, topics, "--max-batch", "50", "--max-in-flight", "200")
    first = ServeProcess(kafka_bootstrap, args, tmp_path / "first.log")
    try:
        assert wait_until(lambda: first.consumed() >= 1000, 90), first.log()
        first.signal(signal.SIGKILL)
        assert first.wait() == -signal.SIGKILL
    finally:
        first.stop()
    at_kill = committed(kafka_bootstrap, topics["group"], topics["input_topic"], 2)
    assert sum(v or 0 for v in at_kill.values()) < total, "killed before the end"

    second = ServeProcess(kafka_bootstrap, args, tmp_path / "second.log")
    try:
        ends = Counter(
            p
            for p, _ in (
                (r.partition, r.offset)
                for r in read_topic(kafka_bootstrap, topics["input_topic"], expect=total)
            )
        )

        def done() -> bool:
            offsets = committed(kafka_bootstrap, topics["group"], topics["input_topic"], 2)
            return offsets == dict(ends)

        assert wait_until(done, 90, interval=0.5), second.log()
        second.signal(signal.SIGTERM)
        assert second.wait() == 0, second.log()
    finally:
        second.stop()
    sources = scored_sources(kafka_bootstrap, topics["scores_topic"])
    expected = {(p, o) for p in range(2) for o in range(ends[p])}
    assert set(sources) == expected  # nothing lost
    # Replays are only of records past the commit at the kill, and at most what was in flight.
    replayed = [source for source, n in Counter(sources).items() if n > 1]
    assert all(offset >= (at_kill[p] or 0) for p, offset in replayed)
    assert len(sources) - len(expected) <= 200 + 50


def test_sigterm_drains_commits_and_exits_zero(kafka_bootstrap, tiny_bundle, tmp_path):
    topics = new_topics(1, kafka_bootstrap)
    rows = np.vstack([dataset(seed=s, n_normal=1000, n_anomalies=20) for s in range(10)])
    total = produce(kafka_bootstrap, topics["input_topic"], records_for(rows, "t"))
    args = serve_args(
        tiny_bundle,
        topics,
        "--max-batch",
        "50",
        "--commit-interval-ms",
        "5000",
        "--log-format",
        "json",
    )
    service = ServeProcess(kafka_bootstrap, args, tmp_path / "serve.log")
    try:
        assert wait_until(lambda: service.consumed() >= 1000, 90), service.log()
        service.signal(signal.SIGTERM)
        assert service.wait(30) == 0, service.log()
    finally:
        service.stop()
    offset = committed(kafka_bootstrap, topics["group"], topics["input_topic"], 1)[0]
    assert offset is not None and 1000 <= offset < total, offset
    # It drained: everything it handled was delivered, then committed (commit interval 5 s
    # never fired on its own, so this commit is the shutdown checkpoint).
    sources = scored_sources(kafka_bootstrap, topics["scores_topic"])
    assert {o for _, o in sources} == set(range(offset)) and len(sources) == offset
    events = [json.loads(line) for line in service.log().splitlines() if line.startswith("{")]
    assert any(e.get("event") == "signal" for e in events)
    assert any(e.get("event") == "stopped" and e.get("clean") is True for e in events)


def test_two_serve_processes_in_one_group_split_the_partitions(
    kafka_bootstrap, tiny_bundle, tmp_path
):
    topics = new_topics(4, kafka_bootstrap)
    args = serve_args(tiny_bundle, topics)
    members = [ServeProcess(kafka_bootstrap, args, tmp_path / f"member{i}.log") for i in range(2)]
    try:

        def split() -> bool:
            assigned = [m.metrics().get("anomaly_assigned_partitions{}", 0) for m in members]
            return sum(assigned) == 4 and min(assigned) >= 1

        assert wait_until(split, 120, interval=0.5), [m.log() for m in members]
        rows = np.vstack([dataset(seed=s) for s in range(3)])
        total = produce(kafka_bootstrap, topics["input_topic"], records_for(rows, "g"))
        ends = Counter(
            r.partition for r in read_topic(kafka_bootstrap, topics["input_topic"], expect=total)
        )

        def done() -> bool:
            offsets = committed(kafka_bootstrap, topics["group"], topics["input_topic"], 4)
            return offsets == dict(ends)

        assert wait_until(done, 60, interval=0.5)
        consumed = [m.consumed() for m in members]
        for member in members:
            member.signal(signal.SIGTERM)
        assert [m.wait(30) for m in members] == [0, 0]
    finally:
        for member in members:
            member.stop()
    assert min(consumed) > 0 and sum(consumed) == total, consumed
    sources = scored_sources(kafka_bootstrap, topics["scores_topic"])
    assert set(sources) == {(p, o) for p in range(4) for o in range(ends[p])}
