"""The scoring loop of ``anomaly serve``: poll → decode → score → produce → flush → commit.

Delivery is at-least-once, with the checkpoint discipline of Quix Streams: records are
decoded and scored in micro-batches (``max_batch`` records or ``max_wait_ms``, whichever
comes first) and their alerts, score messages and dead letters are handed to the producer at
once; every ``commit_interval_ms`` (or when ``max_in_flight`` records are waiting, or when
the input goes quiet) the producer is flushed, every send is checked, and only then are the
offsets after the last handled record committed. A crash between produce and commit replays
the records since the last checkpoint; alerts carry their source offset so consumers can
de-duplicate.

Every consumed record ends either scored (counted, alert when anomalous) or dead-lettered
(original key, value and headers, plus Kafka Connect's ``__connect.errors.*`` headers and
``anomaly.errors.reason``). A send that fails rewinds the consumer to the last checkpoint.

Back-pressure: at most ``max_batch`` records wait to be scored and ``max_in_flight`` records
wait for their checkpoint; when the producer cannot deliver, the checkpoint blocks and the loop
stops polling until it can (or until asked to stop, when nothing undelivered is committed).

Threshold hot reload: ``Bundle.refresh_threshold()`` (a stat of the manifest) runs every
``threshold_refresh_s``; a change is logged and counted in
``anomaly_threshold_reloads_total``.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata

from anomaly.errors import AnomalyError, RecordError
from anomaly.stream.alerts import AlertBuilder, Source, encode
from anomaly.stream.config import ServeConfig
from anomaly.stream.metrics import Metrics, MetricsServer
from anomaly.stream.records import RecordDecoder

log = logging.getLogger("anomaly.stream.service")

UNSCORABLE = "unscorable"
STAGE_DECODE = b"VALUE_CONVERTER"
STAGE_SCORE = b"TRANSFORMATION"
HEADER_REASON = "anomaly.errors.reason"
MAX_DELIVERY_FAILURES = 5


class Scorer(Protocol):
    """What the loop needs from a model bundle (``anomaly.bundle.Bundle`` provides it)."""

    schema: Any
    model_name: str
    model_version: str
    threshold: float
    threshold_version: int
    expected_anomaly_rate: float | None

    def score(self, X_raw: np.ndarray) -> Any:
        """ScoreComponents for a float batch in schema column order."""

    def refresh_threshold(self) -> bool:
        """Re-read the threshold when the manifest changed; True when it did."""


class DeliveryError(AnomalyError):
    """The producer keeps failing to deliver: the service cannot make progress."""


class _Listener(ConsumerRebalanceListener):
    """Forwards kafka-python's rebalance callbacks (run inside ``poll``) to the service."""

    def __init__(self, service: StreamService):
        self.service = service

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        self.service._on_revoked(list(revoked))

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.service._on_assigned(list(assigned))


class StreamService:
    """One consumer-group member scoring ``config.input_topic`` with ``scorer``.

    ``consumer``/``producer`` default to kafka-python clients built from the config. Call
    ``run()`` (blocks; returns the exit status) and ``stop()`` from a signal handler or
    another thread.
    """

    def __init__(
        self,
        config: ServeConfig,
        scorer: Scorer,
        metrics: Metrics | None = None,
        *,
        consumer: KafkaConsumer | None = None,
        producer: KafkaProducer | None = None,
    ):
        if getattr(scorer.schema, "kind", "tabular") != "tabular":
            raise AnomalyError(
                "anomaly serve scores tabular JSON records; this bundle was trained on images "
                "(use `anomaly score` on image folders)"
            )
        self.config = config
        self.scorer = scorer
        self.metrics = metrics or Metrics()
        self.decoder = RecordDecoder(
            scorer.schema.feature_names,
            extra_fields=config.extra_fields,
            max_bytes=config.max_record_bytes,
        )
        unknown = set(config.alert_fields) - self.decoder.allowed
        if unknown:
            raise AnomalyError(
                f"--alert-fields names fields records cannot carry: {', '.join(sorted(unknown))}"
            )
        self.alerts = AlertBuilder(
            scorer.model_name,
            scorer.model_version,
            scorer.schema.feature_names,
            alert_fields=config.alert_fields,
            top_features=config.top_features,
        )
        self._consumer = consumer
        self._producer = producer
        self._owns_producer = producer is None
        self._stop = threading.Event()
        self._pending: list[Any] = []
        self._pending_since = 0.0
        self._next_offsets: dict[tuple[str, int], int] = {}
        self._first_uncommitted: dict[tuple[str, int], int] = {}
        self._positions: dict[tuple[str, int], int] = {}
        self._futures: list[Any] = []
        self._uncommitted = 0
        self._last_checkpoint = time.monotonic()
        self._last_refresh = time.monotonic()
        self._delivery_failures = 0
        self._assigned: list[TopicPartition] = []
        self._in_checkpoint = False
        self._loop_thread = threading.current_thread()
        self._consumed = self.metrics.consumed.labels(topic=config.input_topic)
        self.records_consumed = 0

    # --- control ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish its batch, flush, commit and return (signal-safe)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether ``stop()`` was called."""
        return self._stop.is_set()

    @property
    def assigned_partitions(self) -> int:
        """How many input partitions this member holds now."""
        return len(self._assigned)

    def run(self) -> int:
        """Serve until stopped; 0 after a clean drain, 1 when undelivered work was left."""
        self._loop_thread = threading.current_thread()
        self._connect()
        self._publish_threshold()
        log.info(
            "serving",
            extra={
                "event": "started",
                "input_topic": self.config.input_topic,
                "group": self.config.group,
                "model": self.scorer.model_name,
                "model_version": self.scorer.model_version,
                "threshold": self.scorer.threshold,
            },
        )
        clean = False
        try:
            while not self._stop.is_set():
                self._step()
            self._process_pending()
            clean = self._checkpoint_blocking()
        finally:
            self.metrics.set_ready(False)
            self._close(clean)
        log.info("stopped", extra={"event": "stopped", "clean": clean})
        return 0 if clean else 1

    # --- the loop ----------------------------------------------------------------------------
    def _connect(self) -> None:
        if self._producer is None:
            self._producer = KafkaProducer(**self.config.producer_settings())
        if self._consumer is None:
            self._consumer = KafkaConsumer(**self.config.consumer_settings())
        self._consumer.subscribe([self.config.input_topic], listener=_Listener(self))

    def _step(self) -> None:
        config = self.config
        now = time.monotonic()
        if self._pending:
            wait_ms = max(0, config.max_wait_ms - int((now - self._pending_since) * 1000))
        else:
            wait_ms = max(config.max_wait_ms, 100)
        polled = self._consumer.poll(
            timeout_ms=wait_ms, max_records=config.max_batch - len(self._pending)
        )
        if polled:
            if not self._pending:
                self._pending_since = time.monotonic()
            for records in polled.values():
                self._pending.extend(records)
        now = time.monotonic()
        if self._pending and (
            len(self._pending) >= config.max_batch
            or (now - self._pending_since) * 1000 >= config.max_wait_ms
        ):
            self._process_pending()
        if self._uncommitted and (
            not polled
            or self._uncommitted >= config.max_in_flight
            or (now - self._last_checkpoint) * 1000 >= config.commit_interval_ms
        ):
            self._checkpoint_blocking()
        if now - self._last_refresh >= config.threshold_refresh_s:
            self._last_refresh = now
            self._refresh_threshold()

    def _process_pending(self) -> None:
        """Decode, score and hand to the producer every pending record (one micro-batch)."""
        batch, self._pending = self._pending, []
        if not batch:
            return
        self._consumed.inc(len(batch))
        self.records_consumed += len(batch)
        self.metrics.batch_records.observe(len(batch))
        decode = self.decoder.decode
        rows: list[list[float]] = []
        good: list[Any] = []
        decoded: list[Any] = []
        dead = 0
        for record in batch:
            try:
                item = decode(record.value)
            except RecordError as error:
                self._dead_letter(record, error, STAGE_DECODE)
                dead += 1
                continue
            rows.append(item.row)
            good.append(record)
            decoded.append(item)
        alerts = 0
        if rows:
            alerts, dead_scoring = self._score(good, decoded, rows)
            dead += dead_scoring
        next_offsets = self._next_offsets
        first = self._first_uncommitted
        for record in batch:
            tp = (record.topic, record.partition)
            next_offsets[tp] = record.offset + 1
            if tp not in first:
                first[tp] = record.offset
        self._positions.update(next_offsets)
        self._uncommitted += len(batch)
        log.debug(
            "batch",
            extra={
                "event": "batch",
                "records": len(batch),
                "alerts": alerts,
                "dead_lettered": dead,
            },
        )

    def _score(
        self, records: list[Any], decoded: list[Any], rows: list[list[float]]
    ) -> tuple[int, int]:
        X = np.asarray(rows, dtype=np.float64)
        started = time.perf_counter()
        components = self.scorer.score(X)
        self.metrics.scoring_duration.observe(time.perf_counter() - started)
        scores = np.asarray(components.score, dtype=np.float64)
        threshold = float(self.scorer.threshold)
        version = int(self.scorer.threshold_version)
        finite = np.isfinite(scores)
        dead = 0
        if not finite.all():
            for i in np.flatnonzero(~finite):
                self._dead_letter(
                    records[i],
                    RecordError(UNSCORABLE, "the model gave a non-finite score for this record"),
                    STAGE_SCORE,
                )
                dead += 1
        scored = len(records) - dead
        self.metrics.scored.inc(scored)
        self.metrics.score.observe_many(scores[finite])
        names = components.component_names()
        columns = {name: np.asarray(components.component(name), dtype=np.float64) for name in names}
        scored_ms = int(time.time() * 1000)
        anomalous = np.flatnonzero(finite & (scores > threshold))
        send = self._send
        for i in anomalous:
            record = records[i]
            source = _source(record)
            message = self.alerts.alert(
                source,
                decoded[i].record_id,
                decoded[i].fields,
                float(scores[i]),
                {name: float(col[i]) for name, col in columns.items()},
                components.contributions[i],
                threshold,
                version,
                scored_ms,
            )
            send(self.config.alert_topic, record.key, encode(message))
        self.metrics.alerts.inc(len(anomalous))
        if self.config.scores_topic:
            topic = self.config.scores_topic
            score_message = self.alerts.score_message
            for i in np.flatnonzero(finite):
                record = records[i]
                message = score_message(
                    _source(record),
                    decoded[i].record_id,
                    float(scores[i]),
                    {name: float(col[i]) for name, col in columns.items()},
                    threshold,
                    version,
                    scored_ms,
                )
                send(topic, record.key, encode(message))
            self.metrics.scores_published.inc(scored)
        stamps = np.fromiter((r.timestamp for r in records), dtype=np.float64, count=len(records))
        stamps = stamps[finite & (stamps >= 0)]
        if stamps.size:
            self.metrics.end_to_end_latency.observe_many(time.time() - stamps / 1000.0)
        return len(anomalous), dead

    def _dead_letter(self, record: Any, error: RecordError, stage: bytes) -> None:
        headers = list(record.headers or [])
        headers += [
            (HEADER_REASON, error.reason.encode()),
            ("__connect.errors.topic", record.topic.encode()),
            ("__connect.errors.partition", str(record.partition).encode()),
            ("__connect.errors.offset", str(record.offset).encode()),
            ("__connect.errors.stage", stage),
            ("__connect.errors.exception.class.name", _class_name(error).encode()),
            ("__connect.errors.exception.message", str(error).encode()),
        ]
        self._send(self.config.dlq_topic, record.key, record.value, headers)
        self.metrics.dead_lettered.labels(reason=error.reason).inc()

    def _send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: list[Any] | None = None
    ) -> None:
        try:
            future = self._producer.send(topic, key=key, value=value, headers=headers)
        except KafkaTimeoutError:
            # The producer's buffer stayed full for delivery_timeout_s: drain before going on.
            if not self._checkpoint_blocking():
                raise DeliveryError(
                    "the producer could not deliver and the service is stopping"
                ) from None
            future = self._producer.send(topic, key=key, value=value, headers=headers)
        self._futures.append(future)

    # --- checkpoint --------------------------------------------------------------------------
    def _checkpoint_blocking(self) -> bool:
        """Flush and commit; while the producer cannot deliver, keep trying (polling stops).

        Returns False only when asked to stop while deliveries are still outstanding (nothing
        undelivered is committed then).
        """
        warned = False
        while True:
            outcome = self._checkpoint()
            if outcome != "timeout":
                return outcome == "ok"
            if not warned:
                log.warning(
                    "producer cannot deliver; polling paused",
                    extra={"event": "backpressure", "uncommitted": self._uncommitted},
                )
                warned = True
            if self._stop.is_set():
                log.error(
                    "stopping with undelivered records: not committed, they will be re-read",
                    extra={"event": "abandoned", "uncommitted": self._uncommitted},
                )
                self._forget()
                return False

    def _checkpoint(self) -> str:
        """One attempt: ``ok``, ``timeout`` (deliveries outstanding) or ``failed`` (rewound)."""
        if self._in_checkpoint:
            return "ok"
        if not self._next_offsets and not self._futures:
            self._last_checkpoint = time.monotonic()
            return "ok"
        self._in_checkpoint = True
        try:
            try:
                self._producer.flush(timeout=self.config.delivery_timeout_s)
            except KafkaTimeoutError:
                return "timeout"
            failed = next((f for f in self._futures if f.failed()), None)
            if failed is not None:
                self._rewind(failed.exception)
                return "failed"
            self._delivery_failures = 0
            offsets = {
                TopicPartition(topic, partition): OffsetAndMetadata(offset, "", -1)
                for (topic, partition), offset in self._next_offsets.items()
            }
            try:
                if offsets and threading.current_thread() is self._loop_thread:
                    self._consumer.commit(offsets)
                elif offsets:
                    # kafka-python >= 3 calls rebalance listeners on its IO thread, where a
                    # blocking commit raises RuntimeError (and the member dies). Send it without
                    # waiting: if it fails, the partitions' next owner re-reads these records.
                    self._consumer.commit_async(offsets, callback=_log_async_commit)
            except KafkaError as exc:
                # Typically a rebalance took the partitions away: the new owner re-reads them.
                log.warning(
                    "commit failed; the records since the last commit will be re-read",
                    extra={"event": "commit_failed", "error": repr(exc)},
                )
                self._forget()
                return "failed"
            self.metrics.commits.inc()
            self.metrics.last_commit.set(time.time())
            log.debug("committed", extra={"event": "commit", "records": self._uncommitted})
            self._forget()
            self._update_lag()
            return "ok"
        finally:
            self._in_checkpoint = False

    def _forget(self) -> None:
        self._futures = []
        self._next_offsets = {}
        self._first_uncommitted = {}
        self._uncommitted = 0
        self._last_checkpoint = time.monotonic()

    def _rewind(self, error: BaseException | None) -> None:
        """A send failed: re-read everything since the last checkpoint (at-least-once)."""
        self._delivery_failures += 1
        log.error(
            "delivery failed; rewinding to the last checkpoint",
            extra={
                "event": "delivery_failed",
                "error": repr(error),
                "attempt": self._delivery_failures,
            },
        )
        assigned = set(self._consumer.assignment())
        for (topic, partition), offset in self._first_uncommitted.items():
            tp = TopicPartition(topic, partition)
            if tp in assigned:
                self._consumer.seek(tp, offset)
                self._positions[(topic, partition)] = offset
        self._pending = []
        self._forget()
        if self._owns_producer:
            self._replace_producer()
        if self._delivery_failures >= MAX_DELIVERY_FAILURES:
            raise DeliveryError(
                f"{self._delivery_failures} checkpoints in a row failed to deliver: {error!r}"
            )

    def _replace_producer(self) -> None:
        """Start over with a fresh producer after a failed checkpoint.

        A failed send can leave kafka-python's producer unusable for good: an idempotent
        producer whose id the broker no longer knows (after a broker restart) fails every
        later send. The records are re-read from the last checkpoint anyway, so a new
        producer loses nothing and gets a new id.
        """
        failed = self._producer
        self._producer = KafkaProducer(**self.config.producer_settings())
        log.warning(
            "producer replaced after a failed checkpoint", extra={"event": "producer_reset"}
        )
        try:
            failed.close(timeout=0)
        except KafkaError as exc:
            log.warning("closing the failed producer: %r", exc, extra={"event": "producer_reset"})

    # --- rebalance, threshold, lag -------------------------------------------------------------
    def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        log.info(
            "partitions revoked",
            extra={
                "event": "revoked",
                "partitions": [f"{tp.topic}-{tp.partition}" for tp in revoked],
            },
        )
        if not self._in_checkpoint:
            self._process_pending()
            if self._checkpoint() != "ok":
                self._forget()
        self._pending = []
        for tp in revoked:
            self._positions.pop((tp.topic, tp.partition), None)
            self._remove_lag(tp)
        self._assigned = []
        self.metrics.assigned_partitions.set(0)
        self.metrics.set_ready(False)

    def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        self._assigned = assigned
        self.metrics.assigned_partitions.set(len(assigned))
        self.metrics.set_ready(bool(assigned))
        log.info(
            "partitions assigned",
            extra={
                "event": "assigned",
                "partitions": [f"{tp.topic}-{tp.partition}" for tp in assigned],
            },
        )

    def _remove_lag(self, tp: TopicPartition) -> None:
        try:
            self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        except KeyError:
            pass

    def _update_lag(self) -> None:
        for tp in self._assigned:
            highwater = self._consumer.highwater(tp)
            position = self._positions.get((tp.topic, tp.partition))
            if highwater is not None and position is not None:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                    max(0, highwater - position)
                )

    def _publish_threshold(self) -> None:
        self.metrics.set_threshold(
            float(self.scorer.threshold),
            int(self.scorer.threshold_version),
            self.scorer.expected_anomaly_rate,
        )

    def _refresh_threshold(self) -> None:
        before = float(self.scorer.threshold)
        try:
            changed = self.scorer.refresh_threshold()
        except AnomalyError as exc:
            log.error(
                "could not re-read the threshold; keeping the current one",
                extra={"event": "threshold_reload_failed", "error": str(exc)},
            )
            return
        if changed:
            self.metrics.threshold_reloads.inc()
            self._publish_threshold()
            log.info(
                "threshold reloaded",
                extra={
                    "event": "threshold_reloaded",
                    "previous": before,
                    "threshold": float(self.scorer.threshold),
                    "threshold_version": int(self.scorer.threshold_version),
                },
            )

    def _close(self, clean: bool) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            except KafkaError as exc:
                log.warning("consumer close failed", extra={"event": "close", "error": repr(exc)})
        if self._producer is not None:
            self._producer.close(timeout=self.config.delivery_timeout_s if clean else 0)


def _log_async_commit(offsets: Any, result: Any) -> None:
    if isinstance(result, BaseException):
        log.warning(
            "commit on revocation failed; the new owner re-reads those records",
            extra={"event": "commit_failed", "error": repr(result)},
        )


def _source(record: Any) -> Source:
    timestamp = record.timestamp if record.timestamp is not None and record.timestamp >= 0 else None
    return Source(record.topic, record.partition, record.offset, timestamp, record.key)


def _class_name(error: BaseException) -> str:
    kind = type(error)
    return f"{kind.__module__}.{kind.__qualname__}"


# --- process wiring: logging, signals, serve() ------------------------------------------------
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exception"] = "".join(traceback.format_exception(*record.exc_info)).strip()
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable lines with the ``extra`` fields appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = " ".join(
            f"{k}={v}"
            for k, v in vars(record).items()
            if k not in _STANDARD_ATTRS and not k.startswith("_") and k != "event"
        )
        return f"{line} {extras}" if extras else line


def configure_logging(log_format: str = "text", level: str = "INFO") -> None:
    """Route the ``anomaly`` loggers to stderr as text or JSON lines; kafka-python stays quiet."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
        handler.formatter.converter = time.gmtime
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("anomaly")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    kafka_log = logging.getLogger("kafka")
    kafka_log.handlers[:] = [handler]
    kafka_log.setLevel(max(logging.WARNING, root.level))
    kafka_log.propagate = False


def install_signal_handlers(service: StreamService) -> None:
    """SIGTERM and SIGINT ask the service to drain and stop (main thread only)."""

    def handler(signum: int, frame: Any) -> None:
        log.info(
            "signal received; draining",
            extra={"event": "signal", "signal": signal.Signals(signum).name},
        )
        service.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def backend_info() -> tuple[str, str]:
    """(Keras backend, Keras version) for ``anomaly_model_info``."""
    import keras

    return keras.config.backend(), keras.__version__


def serve(config: ServeConfig, *, on_ready: Callable[[MetricsServer], None] | None = None) -> int:
    """Run ``anomaly serve``: metrics server, bundle, loop; returns the process exit status."""
    from anomaly.model.bundle import Bundle

    configure_logging(config.log_format, config.log_level)
    log.info("configuration", extra={"event": "config", "config": repr(config)})
    metrics = Metrics()
    server = MetricsServer(metrics, config.metrics_host, config.metrics_port).start()
    log.info("metrics at %s", server.url, extra={"event": "metrics_listening", "url": server.url})
    try:
        bundle = Bundle.load(config.bundle)
        backend, keras_version = backend_info()
        metrics.set_model(str(bundle.model_name), str(bundle.model_version), backend, keras_version)
        service = StreamService(config, bundle, metrics)
        if threading.current_thread() is threading.main_thread():
            install_signal_handlers(service)
        if on_ready is not None:
            on_ready(server)
        return service.run()
    finally:
        server.stop()
