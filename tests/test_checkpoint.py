"""The checkpoint state machine's edges: liveness (/healthz over real HTTP while the loop is
wedged), SIGTERM during start-up, exit codes as documented, and ``--exactly-once`` output
read back in its read_committed view (real broker on 127.0.0.1, real processes)."""

from __future__ import annotations

import json
import re
import signal
import threading
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from anomaly.bundle.bundle import Bundle
from anomaly.stream.checkpoint import ExitCode
from anomaly.stream.config import ConfigError, load_serve_config
from anomaly.stream.metrics import Metrics, MetricsServer
from anomaly.stream.service import StreamService
from anomaly.topics import produce
from testsupport.data import FEATURES, make_tabular_data, unique_name
from testsupport.kafka import (
    ServeProcess,
    committed,
    new_topics,
    read_topic,
    wait_until,
)

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[1]


def status_of(url: str) -> int:
    """HTTP status of a GET (503 included), 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def records(n: int, seed: int = 0) -> list[tuple[bytes, bytes]]:
    normal, anomalies = make_tabular_data(n - n // 10, n // 10, seed)
    rows = np.vstack([normal, anomalies])
    rows[:, 4] = np.abs(rows[:, 4]) * 100
    out = []
    for i, row in enumerate(rows.tolist()):
        body = {**dict(zip(FEATURES, row, strict=True)), "id": f"r-{i}"}
        out.append((f"r-{i}".encode(), json.dumps(body).encode()))
    return out


def config_for(bootstrap: str, bundle: Path, topics: dict[str, str], **extra: Any):
    flags = {
        **topics,
        "bundle": str(bundle),
        "bootstrap_servers": bootstrap,
        "session_timeout_ms": 4000,
        "heartbeat_interval_ms": 500,
        "max_batch": 64,
        "commit_interval_ms": 200,
        **extra,
    }
    return load_serve_config(flags, env={})


class Running:
    """A StreamService in a thread with a real metrics server on a free port."""

    def __init__(self, config, scorer: Any):
        self.metrics = Metrics()
        self.server = MetricsServer(self.metrics, "127.0.0.1", 0).start()
        self.service = StreamService(config, scorer, self.metrics)
        self.status: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.status = self.service.run()

    def url(self, path: str) -> str:
        return self.server.url.replace("/metrics", path)

    def stop(self) -> int | None:
        self.service.stop()
        self.thread.join(60)
        self.server.stop()
        return self.status


class Wedgeable:
    """The real bundle; ``score_components`` blocks while ``gate`` is closed (a wedged loop)."""

    def __init__(self, bundle: Bundle):
        self._bundle = bundle
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bundle, name)

    def score_components(self, X: np.ndarray) -> Any:
        self.entered.set()
        self.gate.wait(60)
        return self._bundle.score_components(X)


def test_healthz_turns_503_while_the_loop_is_wedged_and_200_when_it_turns_again(
    kafka_bootstrap, tiny_bundle
):
    topics = new_topics(kafka_bootstrap)
    scorer = Wedgeable(Bundle.load(tiny_bundle))
    config = config_for(
        kafka_bootstrap, tiny_bundle, topics, liveness_timeout_s=1.0, delivery_timeout_s=0.5
    )
    runner = Running(config, scorer)
    try:
        assert wait_until(lambda: runner.service.assigned_partitions == 1, 60)
        assert status_of(runner.url("/healthz")) == 200
        produce(kafka_bootstrap, topics["input_topic"], records(20))
        assert scorer.entered.wait(30), "the loop reached the model"
        assert wait_until(lambda: status_of(runner.url("/healthz")) == 503, 10, 0.2)
        assert status_of(runner.url("/readyz")) == 200  # ready (assigned), yet not live
        scorer.gate.set()
        assert wait_until(lambda: status_of(runner.url("/healthz")) == 200, 10, 0.2)
        assert wait_until(lambda: runner.service.records_consumed >= 20, 30)
    finally:
        scorer.gate.set()
        assert runner.stop() == ExitCode.OK


def test_sigterm_during_startup_exits_zero_with_a_log_line(kafka_bootstrap, tiny_bundle, tmp_path):
    topics = new_topics(kafka_bootstrap)
    args = ["--bundle", str(tiny_bundle), "--log-format", "json"]
    for name, value in topics.items():
        args += ["--" + name.replace("_", "-"), value]
    serve = ServeProcess(kafka_bootstrap, args, tmp_path / "serve.log")
    try:
        # The metrics server answers before the bundle (and TensorFlow) load.
        assert wait_until(lambda: '"metrics_listening"' in serve.log(), 60, 0.02), serve.log()
        serve.signal(signal.SIGTERM)
        assert serve.wait(60) == 0, serve.log()
    finally:
        serve.stop()
    events = [json.loads(line) for line in serve.log().splitlines() if line.startswith("{")]
    assert any(e.get("event") == "signal" and e.get("signal") == "SIGTERM" for e in events)
    stopped = [e for e in events if e.get("event") == "stopped"]
    assert stopped and stopped[-1]["clean"] is True and stopped[-1].get("stage"), serve.log()
    assert not any(e.get("event") == "started" for e in events)  # never joined the group


def test_exit_codes_are_the_documented_table():
    text = (ROOT / "docs" / "streaming.md").read_text()
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| (\d) \|", section, re.MULTILINE)}
    assert documented == {int(code) for code in ExitCode}


def test_exactly_once_outputs_commit_with_the_offsets(kafka_bootstrap, tiny_bundle):
    topics = new_topics(kafka_bootstrap, partitions=2)
    items = records(300, seed=3) + [(b"bad", b"not json")]
    total = produce(kafka_bootstrap, topics["input_topic"], items)
    config = config_for(
        kafka_bootstrap, tiny_bundle, topics, exactly_once=True, transactional_id=unique_name("t")
    )
    assert config.consumer_settings()["isolation_level"] == "read_committed"
    runner = Running(config, Bundle.load(tiny_bundle))
    try:
        assert wait_until(lambda: runner.service.records_consumed >= total, 60)
        assert wait_until(lambda: runner.service.uncommitted == 0, 20)
    finally:
        assert runner.stop() == ExitCode.OK
    scores = read_topic(kafka_bootstrap, topics["scores_topic"], committed_only=True)
    dead = read_topic(kafka_bootstrap, topics["dlq_topic"], committed_only=True)
    sources = Counter(
        (json.loads(m.value)["source"]["partition"], json.loads(m.value)["source"]["offset"])
        for m in scores
    )
    assert len(sources) == total - 1 and max(sources.values()) == 1
    assert [m.value for m in dead] == [b"not json"]
    ends = Counter(r.partition for r in read_topic(kafka_bootstrap, topics["input_topic"], total))
    offsets = committed(kafka_bootstrap, topics["group"], topics["input_topic"], 2)
    assert offsets == dict(ends)  # committed through the transactions


def test_the_flush_timeout_keeps_polling_within_max_poll_interval_and_under_liveness():
    base = {"bundle": "b", "input_topic": "i", "alert_topic": "a", "dlq_topic": "d", "group": "g"}
    config = load_serve_config({**base, "max_poll_interval_ms": 6000}, env={})
    assert config.flush_timeout_s == 2.0  # a third of max_poll_interval, not 30 s
    assert config.producer_settings()["max_block_ms"] == 2000
    assert load_serve_config(base, env={}).flush_timeout_s == 30.0
    with pytest.raises(ConfigError, match="liveness_timeout_s must exceed"):
        load_serve_config({**base, "delivery_timeout_s": 90, "liveness_timeout_s": 60}, env={})
    # Transactions commit the offsets on the producer's cluster: it must be the input's.
    with pytest.raises(ConfigError, match="input's cluster"):
        load_serve_config(
            {**base, "exactly_once": True},
            env={"ANOMALY_PRODUCER__BOOTSTRAP_SERVERS": "elsewhere:9092"},
        )
