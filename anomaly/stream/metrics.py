"""Every Prometheus metric of the service, in one registry, and the HTTP server that serves it.

Names follow docs/INTERNAL_CONTRACTS.md (prefix ``anomaly_``, base units, ``_total`` on
counters). The two per-record histograms (score, end-to-end latency) take whole numpy
batches: prometheus_client's ``observe`` costs about a microsecond per call, which at tens of
thousands of records a second is a visible share of the loop, so they bin a batch with one
``searchsorted`` instead.

``/healthz`` answers 503 once the poll loop has not turned for ``liveness_timeout_s`` (a
wedged loop); ``/readyz`` 200 once the model is loaded and partitions are assigned.

The HTTP server answers only ``/metrics``, ``/healthz`` and ``/readyz`` (GET/HEAD), binds the
address it is given (loopback unless configured otherwise), drops idle connections after a
few seconds, caps concurrent connections, and answers malformed requests with a 4xx without
stopping.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from anomaly.stream.config import DEFAULT_HOST, DEFAULT_PORT, ConfigError

log = logging.getLogger(__name__)


SCORE_BUCKETS = tuple(float(f"{b:.4g}") for b in np.logspace(-3, 3, 25))
# 0.15-0.4 s: the latency target (p99 250 ms) and the measured p50-p99 (~120-380 ms, issue 23)
# fall there, and a bucket from 250 to 500 ms could not tell a met target from a missed one
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
SCORING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class BatchHistogram(Collector):
    """A Prometheus histogram fed a numpy array at a time (one searchsorted per batch)."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]):
        self.name = name
        self.documentation = documentation
        self.bounds = np.asarray(sorted(buckets), dtype=np.float64)
        self._counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values: np.ndarray) -> None:
        """Add every finite value of ``values`` to the histogram."""
        values = np.asarray(values, dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        if values.size == 0:
            return
        slots = np.searchsorted(self.bounds, values, side="left")
        counts = np.bincount(slots, minlength=len(self._counts))
        total = float(values.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    @property
    def count(self) -> int:
        """Number of observations so far."""
        with self._lock:
            return int(self._counts.sum())

    def collect(self) -> Iterator[HistogramMetricFamily]:
        """Yield the cumulative buckets in Prometheus' histogram form."""
        with self._lock:
            cumulative = np.cumsum(self._counts)
            total = self._sum
        buckets = [
            (f"{bound:g}", float(c)) for bound, c in zip(self.bounds, cumulative, strict=False)
        ]
        buckets.append(("+Inf", float(cumulative[-1])))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], buckets, total)
        yield family

    def describe(self) -> list[HistogramMetricFamily]:
        """Describe the family so the registry can refuse duplicate names."""
        return [HistogramMetricFamily(self.name, self.documentation)]


class DriftGauges(NamedTuple):
    """Where a drift monitor publishes: score PSI, per-feature PSI, window size."""

    score: Gauge
    feature: Gauge
    window: Gauge


class Metrics:
    """The service's metrics on a private registry (tests and two services never collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.consumed = Counter(
            "anomaly_records_consumed_total",
            "Records read from the input topic.",
            ["topic"],
            registry=r,
        )
        self.scored = Counter(
            "anomaly_records_scored_total", "Records scored by the model.", registry=r
        )
        self.dead_lettered = Counter(
            "anomaly_records_dead_lettered_total",
            "Records sent to the dead-letter topic, by reason code.",
            ["reason"],
            registry=r,
        )
        self.alerts = Counter("anomaly_alerts_total", "Alerts published.", registry=r)
        self.scores_published = Counter(
            "anomaly_scores_published_total",
            "Score messages published to the scores topic.",
            registry=r,
        )
        self.score = BatchHistogram(
            "anomaly_score", "Anomaly score of each scored record.", SCORE_BUCKETS
        )
        r.register(self.score)
        self.scoring_duration = Histogram(
            "anomaly_scoring_duration_seconds",
            "Wall time of one Bundle.score call on a micro-batch.",
            buckets=SCORING_BUCKETS,
            registry=r,
        )
        self.batch_records = Histogram(
            "anomaly_batch_records", "Records per micro-batch.", buckets=BATCH_BUCKETS, registry=r
        )
        self.end_to_end_latency = BatchHistogram(
            "anomaly_end_to_end_latency_seconds",
            "Broker timestamp of the input record to its alert/score being handed to the producer.",
            LATENCY_BUCKETS,
        )
        r.register(self.end_to_end_latency)
        self.consumer_lag = Gauge(
            "anomaly_consumer_lag_records",
            "High watermark minus position, per assigned partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.threshold = Gauge("anomaly_threshold", "Score threshold in use.", registry=r)
        self.threshold_version = Gauge(
            "anomaly_threshold_version",
            "1-based index of the threshold in the bundle history.",
            registry=r,
        )
        self.threshold_reloads = Counter(
            "anomaly_threshold_reloads_total",
            "Threshold changes picked up while running.",
            registry=r,
        )
        self.expected_anomaly_rate = Gauge(
            "anomaly_expected_anomaly_rate",
            "Anomaly rate the threshold was calibrated for.",
            registry=r,
        )
        self.feature_drift = Gauge(
            "anomaly_feature_drift_psi",
            "Population stability index of each input feature over the drift window against "
            "the bundle's training rows (0 = same distribution, > 0.25 a major shift).",
            ["feature"],
            registry=r,
        )
        self.score_drift = Gauge(
            "anomaly_score_drift_psi",
            "Population stability index of the score over the drift window against the "
            "bundle's calibration split.",
            registry=r,
        )
        self.drift_window = Gauge(
            "anomaly_drift_window_records",
            "Scored records the drift gauges summarise (the rolling window).",
            registry=r,
        )
        self.model_info = Info("anomaly_model", "The model bundle being served.", registry=r)
        self.bundle_reloads = Counter(
            "anomaly_bundle_reloads_total",
            "Live bundle switches picked up while running (anomaly promote / --rollback).",
            registry=r,
        )
        self._shadow_metrics(r)
        self.last_commit = Gauge(
            "anomaly_last_commit_timestamp_seconds",
            "Unix time of the last successful offset commit.",
            registry=r,
        )
        self.commits = Counter("anomaly_commits_total", "Successful offset commits.", registry=r)
        self.assigned_partitions = Gauge(
            "anomaly_assigned_partitions", "Input partitions assigned to this consumer.", registry=r
        )
        self.ready = Gauge(
            "anomaly_ready", "1 when the model is loaded and partitions are assigned.", registry=r
        )
        self._ready = False
        self.liveness_timeout_s = 60.0
        self._last_beat: float | None = None

    def _shadow_metrics(self, r: CollectorRegistry) -> None:
        """The challenger's metrics (``serve --shadow-bundle``): what it would have done, and
        how that compares with the live bundle over the comparison window."""
        self.shadow_scored = Counter(
            "anomaly_shadow_records_scored_total",
            "Records the shadow (challenger) bundle scored.",
            registry=r,
        )
        self.shadow_alerts = Counter(
            "anomaly_shadow_alerts_total",
            "Records the shadow bundle would have alerted on (never published as alerts).",
            registry=r,
        )
        self.shadow_published = Counter(
            "anomaly_shadow_scores_published_total",
            "Shadow score messages published to the shadow scores topic.",
            registry=r,
        )
        self.shadow_scoring_duration = Histogram(
            "anomaly_shadow_scoring_duration_seconds",
            "Wall time of the shadow bundle's score call on a micro-batch (its latency cost "
            "beside anomaly_scoring_duration_seconds).",
            buckets=SCORING_BUCKETS,
            registry=r,
        )
        self.shadow_alert_ratio = Gauge(
            "anomaly_shadow_alert_ratio",
            "Share of the comparison window's records each bundle alerts on (role: live, shadow).",
            ["role"],
            registry=r,
        )
        self.shadow_jaccard = Gauge(
            "anomaly_shadow_alert_jaccard_ratio",
            "Records both bundles alert on over records either alerts on, in the comparison "
            "window (1 when neither alerts).",
            registry=r,
        )
        self.shadow_rank_correlation = Gauge(
            "anomaly_shadow_score_rank_correlation",
            "Spearman rank correlation of the live and shadow scores over the comparison window.",
            registry=r,
        )
        self.shadow_window = Gauge(
            "anomaly_shadow_window_records",
            "Records the shadow comparison gauges summarise (the rolling window).",
            registry=r,
        )
        self.shadow_threshold = Gauge(
            "anomaly_shadow_threshold", "Score threshold of the shadow bundle.", registry=r
        )
        self.shadow_score_drift = Gauge(
            "anomaly_shadow_score_drift_psi",
            "Population stability index of the shadow score over its drift window against the "
            "shadow bundle's calibration split.",
            registry=r,
        )
        self.shadow_feature_drift = Gauge(
            "anomaly_shadow_feature_drift_psi",
            "Population stability index of each input feature over the shadow drift window "
            "against the shadow bundle's training rows.",
            ["feature"],
            registry=r,
        )
        self.shadow_drift_window = Gauge(
            "anomaly_shadow_drift_window_records",
            "Scored records the shadow drift gauges summarise.",
            registry=r,
        )
        self.shadow_reloads = Counter(
            "anomaly_shadow_reloads_total",
            "Shadow bundle switches picked up while running.",
            registry=r,
        )
        self.shadow_info = Info(
            "anomaly_shadow_model", "The shadow (challenger) bundle.", registry=r
        )

    def drift_gauges(self, shadow: bool = False) -> DriftGauges:
        """The gauges a drift monitor publishes to: the live bundle's or the shadow's."""
        if shadow:
            return DriftGauges(
                self.shadow_score_drift, self.shadow_feature_drift, self.shadow_drift_window
            )
        return DriftGauges(self.score_drift, self.feature_drift, self.drift_window)

    def beat(self) -> None:
        """The poll loop turned (its liveness heartbeat, read by /healthz)."""
        self._last_beat = time.monotonic()

    def loop_stopped(self) -> None:
        """The loop returned: /healthz no longer judges it."""
        self._last_beat = None

    @property
    def is_live(self) -> bool:
        """False when the loop has not turned for ``liveness_timeout_s`` (a wedged loop);
        True before it starts (loading the bundle) and after it stops."""
        beat = self._last_beat
        return beat is None or time.monotonic() - beat <= self.liveness_timeout_s

    def set_ready(self, ready: bool) -> None:
        """Record readiness for /readyz and the ``anomaly_ready`` gauge."""
        self._ready = ready
        self.ready.set(1 if ready else 0)

    @property
    def is_ready(self) -> bool:
        """Whether /readyz answers 200."""
        return self._ready

    def set_model(self, name: str, version: str, backend: str, keras_version: str) -> None:
        """Publish ``anomaly_model_info``."""
        self.model_info.info(
            {"name": name, "version": version, "backend": backend, "keras_version": keras_version}
        )

    def switch_model(self, name: str, version: str) -> None:
        """Publish another bundle in ``anomaly_model_info`` (same backend, a hot swap)."""
        runtime = {k: v for k, v in self.model_info._value.items() if k not in ("name", "version")}
        self.model_info.info({"name": name, "version": version, **runtime})

    def set_threshold(self, threshold: float, version: int, expected_rate: float | None) -> None:
        """Publish the threshold in use, its version and its calibration rate."""
        self.threshold.set(threshold)
        self.threshold_version.set(version)
        if expected_rate is not None:
            self.expected_anomaly_rate.set(expected_rate)

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)


class _Handler(BaseHTTPRequestHandler):
    """Serves the three endpoints; everything else is 404/405, never a traceback."""

    server_version = "anomaly"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # error replies to garbage still get a status line
    error_message_format = "%(code)d %(message)s\n"
    error_content_type = "text/plain; charset=utf-8"
    timeout = 5
    metrics: Metrics

    def _reply(
        self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._reply(200, self.metrics.exposition(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            if self.metrics.is_live:
                self._reply(200, b"ok\n")
            else:
                self._reply(503, b"loop stalled\n")
        elif path == "/readyz":
            if self.metrics.is_ready:
                self._reply(200, b"ready\n")
            else:
                self._reply(503, b"not ready\n")
        else:
            self._reply(404, b"not found\n")

    do_HEAD = do_GET  # noqa: N815

    def _refuse(self) -> None:
        self.close_connection = True
        self.send_response(405)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        log.debug("metrics http: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    max_connections = 32

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(self.max_connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics http: error while serving %s", client_address, exc_info=True)


def _bind_failure(host: str, port: int, exc: OSError) -> str:
    """One line saying why the metrics server cannot listen at ``host:port`` and what to change."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        why = "the port is in use (another serve on this host?); choose another --metrics-port"
    elif exc.errno == errno.EADDRNOTAVAIL:
        why = "this host has no such address; check --metrics-host"
    elif exc.errno == errno.EACCES:
        why = "permission denied (ports below 1024 need privileges); choose another --metrics-port"
    elif isinstance(exc, socket.gaierror):
        why = f"unknown host ({exc.strerror}); check --metrics-host"
    else:
        why = f"{exc.strerror or exc}; check --metrics-host and --metrics-port"
    return f"cannot serve metrics at {where}: {why}"


class MetricsServer:
    """Background HTTP server for /metrics, /healthz and /readyz; port 0 picks a free one."""

    def __init__(self, metrics: Metrics, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT):
        handler = type("Handler", (_Handler,), {"metrics": metrics})
        try:
            self._server = _Server((host, port), handler)
        except OSError as exc:  # a taken port is a setting to change, not a crash
            raise ConfigError(_bind_failure(host, port, exc)) from None
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.1,), name="metrics-http", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """The /metrics URL."""
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/metrics"

    def start(self) -> MetricsServer:
        """Serve in a daemon thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
