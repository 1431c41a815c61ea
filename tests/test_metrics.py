"""The metrics registry and its HTTP server, over real sockets on 127.0.0.1."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from anomaly.stream.metrics import Metrics, MetricsServer
from testsupport.kafka import committed, new_topics
from testsupport.reliability import produce_records

CONTRACT = {
    "anomaly_records_consumed": "counter",
    "anomaly_records_scored": "counter",
    "anomaly_records_dead_lettered": "counter",
    "anomaly_alerts": "counter",
    "anomaly_scores_published": "counter",
    "anomaly_score": "histogram",
    "anomaly_scoring_duration_seconds": "histogram",
    "anomaly_batch_records": "histogram",
    "anomaly_end_to_end_latency_seconds": "histogram",
    "anomaly_consumer_lag_records": "gauge",
    "anomaly_threshold": "gauge",
    "anomaly_threshold_version": "gauge",
    "anomaly_threshold_reloads": "counter",
    "anomaly_expected_anomaly_rate": "gauge",
    "anomaly_feature_drift_psi": "gauge",
    "anomaly_score_drift_psi": "gauge",
    "anomaly_drift_window_records": "gauge",
    "anomaly_model_info": "gauge",  # the Prometheus text format writes an Info as a gauge
    "anomaly_bundle_reloads": "counter",
    "anomaly_shadow_records_scored": "counter",
    "anomaly_shadow_alerts": "counter",
    "anomaly_shadow_scores_published": "counter",
    "anomaly_shadow_scoring_duration_seconds": "histogram",
    "anomaly_shadow_alert_ratio": "gauge",
    "anomaly_shadow_alert_jaccard_ratio": "gauge",
    "anomaly_shadow_score_rank_correlation": "gauge",
    "anomaly_shadow_window_records": "gauge",
    "anomaly_shadow_threshold": "gauge",
    "anomaly_shadow_score_drift_psi": "gauge",
    "anomaly_shadow_feature_drift_psi": "gauge",
    "anomaly_shadow_drift_window_records": "gauge",
    "anomaly_shadow_reloads": "counter",
    "anomaly_shadow_model_info": "gauge",
    "anomaly_last_commit_timestamp_seconds": "gauge",
    "anomaly_commits": "counter",
    "anomaly_assigned_partitions": "gauge",
    "anomaly_ready": "gauge",
}


@pytest.fixture
def served():
    metrics = Metrics()
    server = MetricsServer(metrics, "127.0.0.1", 0).start()
    yield metrics, server
    server.stop()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def raw_request(address: tuple[str, int], payload: bytes) -> bytes:
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def scrape(url: str) -> dict[str, float]:
    status, body = get(url)
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def test_every_contract_metric_is_exposed_with_its_type(served):
    metrics, server = served
    metrics.consumed.labels(topic="in").inc()
    metrics.dead_lettered.labels(reason="empty").inc()
    metrics.consumer_lag.labels("in", "0").set(3)
    metrics.set_model("fraud", "abc123", "tensorflow", "3.15.1")
    status, body = get(server.url)
    assert status == 200
    families = {f.name: f.type for f in text_string_to_metric_families(body.decode())}
    for name, kind in CONTRACT.items():
        assert families.get(name) == kind, name
    # and nothing outside it (the text parser reads a counter's `_created` as its own family)
    exposed = {name for name in families if not name.endswith("_created")}
    assert exposed == set(CONTRACT), exposed ^ set(CONTRACT)


def test_the_contract_is_the_table_in_internal_contracts():
    """docs/INTERNAL_CONTRACTS.md lists the same metrics with the same types as CONTRACT."""
    text = (Path(__file__).parents[1] / "docs" / "INTERNAL_CONTRACTS.md").read_text()
    table = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    documented = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("anomaly_"):
            name, kind = cells[0], cells[1]
            if kind == "counter":  # the family is named without `_total`
                name = name.removesuffix("_total")
            documented[name] = "gauge" if kind == "info" else kind
    assert documented == CONTRACT


def test_counts_and_batch_histograms_read_back_over_http(served):
    metrics, server = served
    metrics.consumed.labels(topic="tx").inc(10)
    metrics.scored.inc(8)
    metrics.dead_lettered.labels(reason="wrong_type").inc(2)
    metrics.score.observe_many(np.array([0.002, 0.5, 0.5, 7.0, np.nan]))
    metrics.end_to_end_latency.observe_many(np.array([0.004, 0.2, 0.28, 0.35]))
    metrics.set_threshold(1.25, 3, 0.01)
    samples = scrape(server.url)
    assert samples["anomaly_records_consumed_total{topic=tx}"] == 10
    assert samples["anomaly_records_scored_total{}"] == 8
    assert samples["anomaly_records_dead_lettered_total{reason=wrong_type}"] == 2
    assert samples["anomaly_score_count{}"] == 4  # NaN is not observed
    assert samples["anomaly_score_sum{}"] == pytest.approx(8.002)
    assert samples["anomaly_score_bucket{le=+Inf}"] == 4
    assert samples["anomaly_score_bucket{le=1}"] == 3
    assert samples["anomaly_end_to_end_latency_seconds_bucket{le=0.005}"] == 1
    assert samples["anomaly_end_to_end_latency_seconds_bucket{le=0.25}"] == 2
    # around the 250 ms p99 target the buckets tell a met target from a missed one
    assert samples["anomaly_end_to_end_latency_seconds_bucket{le=0.3}"] == 3
    assert samples["anomaly_end_to_end_latency_seconds_bucket{le=0.4}"] == 4
    assert samples["anomaly_threshold{}"] == 1.25
    assert samples["anomaly_threshold_version{}"] == 3
    assert samples["anomaly_expected_anomaly_rate{}"] == 0.01


def test_health_and_readiness(served):
    metrics, server = served
    base = server.url.removesuffix("/metrics")
    assert get(base + "/healthz") == (200, b"ok\n")
    assert get(base + "/readyz")[0] == 503
    metrics.set_ready(True)
    assert get(base + "/readyz") == (200, b"ready\n")
    assert scrape(server.url)["anomaly_ready{}"] == 1


def test_only_its_endpoints_and_methods(served):
    _, server = served
    base = server.url.removesuffix("/metrics")
    assert get(base + "/")[0] == 404
    assert get(base + "/metrics/../etc/passwd")[0] == 404
    assert get(server.url + "?name[]=x")[0] == 200
    request = urllib.request.Request(server.url, data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    assert info.value.code == 405


@pytest.mark.parametrize(
    "payload",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),  # a TLS hello
        b"GET /metrics HTTP/9.9\r\n\r\n",
        b"BREW /coffee HTCPCP/1.0\r\n\r\n",
        b"GET " + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\n" + b"X-Junk: y\r\n" * 200 + b"\r\n",
        b"\r\n\r\n\r\n",
        b"",
    ],
)
def test_malformed_requests_get_an_answer_and_the_server_survives(served, payload):
    _, server = served
    answer = raw_request(server.address, payload)
    assert answer == b"" or re.match(rb"HTTP/1\.[01] [45]\d\d", answer), answer[:80]
    assert get(server.url)[0] == 200


def test_binds_the_configured_address_only(served):
    _, server = served
    host, port = server.address
    assert host == "127.0.0.1"
    assert server.url == f"http://127.0.0.1:{port}/metrics"


def test_serve_on_a_taken_metrics_port_is_one_line_exit_2_and_consumes_nothing(
    tiny_bundle, kafka_bootstrap
):
    """A port another process listens on: one `error:` line naming it, exit 2, no
    traceback, and the group commits nothing (the records stay for a serve that starts)."""
    topics = new_topics(kafka_bootstrap)
    produce_records(kafka_bootstrap, topics["input_topic"], 20)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        flags = [f"--{key.replace('_', '-')}={value}" for key, value in topics.items()]
        proc = subprocess.run(
            [shutil.which("anomaly") or "anomaly", "serve", "--bundle", str(tiny_bundle),
             "--bootstrap-servers", kafka_bootstrap, "--metrics-port", str(port), *flags],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )  # fmt: skip
        assert taken.getsockname()[1] == port  # still ours
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("error: "), proc.stderr[-2000:]
    assert f"127.0.0.1:{port}" in errors[0] and "in use" in errors[0], errors[0]
    assert "--metrics-port" in errors[0]
    assert committed(kafka_bootstrap, topics["group"], topics["input_topic"], 1) == {0: None}
