"""Decode → score → produce for one micro-batch: every record ends scored (a score message
when a scores topic is set; an alert when over the threshold) or dead-lettered.

``BatchScorer.process`` hands every output to a ``send`` callable and returns a
``ScoredBatch`` (the feature matrix and scores the model saw), which is what per-batch
observers such as a drift monitor receive. It never checkpoints: delivery and commit belong
to ``anomaly.stream.checkpoint``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from anomaly.errors import AnomalyError, RecordError
from anomaly.stream.alerts import AlertBuilder, source_of
from anomaly.stream.config import ServeConfig
from anomaly.stream.metrics import Metrics
from anomaly.stream.records import RecordDecoder

UNSCORABLE = "unscorable"
STAGE_DECODE = b"VALUE_CONVERTER"
STAGE_SCORE = b"TRANSFORMATION"
HEADER_REASON = "anomaly.errors.reason"

# One topic's outputs of a batch, handed over together: topic, keys, values, headers (or None).
Keys = Sequence[bytes | None]
Send = Callable[[str, Keys, Sequence[bytes | None], Sequence[list[Any]] | None], None]


class Scorer(Protocol):
    """What the loop needs from a model bundle (``anomaly.bundle.bundle.Bundle`` provides it)."""

    schema: Any
    model_name: str
    model_version: str
    threshold: float
    threshold_version: int
    expected_anomaly_rate: float | None

    def score_components(self, X_raw: np.ndarray) -> Any:
        """ScoreComponents for a float batch in schema column order."""

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """Which scores are anomalies under the live threshold."""

    def refresh_threshold(self) -> bool:
        """Re-read the threshold when the manifest changed; True when it did."""


@dataclass(frozen=True)
class ScoredBatch:
    """One micro-batch after scoring: what observers (drift, tests) get to see."""

    records: int  # consumed records in the batch, dead letters included
    features: np.ndarray  # (n, features) float64 rows the model scored
    scores: np.ndarray  # (n,) scores, NaN/inf where the model gave a non-finite score
    threshold: float
    alerts: int
    dead_lettered: int


def require_tabular(schema: Any) -> None:
    """Refuse a bundle the stream cannot score: records are JSON rows of named features."""
    if getattr(schema, "kind", "tabular") != "tabular":
        raise AnomalyError(
            "anomaly serve scores tabular JSON records; this bundle was trained on images "
            "(score image folders with `anomaly score-images`)"
        )


class BatchScorer:
    """Turns consumed records into alerts, score messages and dead letters."""

    def __init__(self, config: ServeConfig, scorer: Scorer, metrics: Metrics):
        require_tabular(scorer.schema)
        self.config = config
        self.scorer = scorer
        self.metrics = metrics
        self.shadow: Any = None  # anomaly.stream.shadow.Shadow, scoring beside the live bundle
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

    def warm_up(self) -> None:
        """Score one all-zero batch per compiled batch size the stream can meet, before
        consuming (``anomaly serve`` does, at start-up): the first batch of each size
        otherwise pays for tracing the scoring graph (0.1-0.3 s each here) in the middle of
        the stream, a stall every record behind it waits out (bench/stream.py's latency tail)."""
        width = len(self.scorer.schema.feature_names)
        for size in self.batch_sizes():
            self.scorer.score_components(np.zeros((size, width), dtype=np.float64))

    def batch_sizes(self) -> list[int]:
        """Every compiled batch size a micro-batch can be padded up to."""
        from detectors.base import SCORING_BUCKETS  # the sizes a batch is padded up to

        sizes = [size for size in SCORING_BUCKETS if size < self.config.max_batch]
        return [*sizes, self.config.max_batch]

    def process(self, batch: Sequence[Any], send: Send) -> ScoredBatch:
        """Decode, score and ``send`` every output of ``batch``."""
        self.metrics.batch_records.observe(len(batch))
        rows: list[list[float]] = []
        good: list[Any] = []
        decoded: list[Any] = []
        dead = 0
        decode = self.decoder.decode
        for record in batch:
            try:
                item = decode(record.value)
            except RecordError as error:
                self._dead_letter(record, error, STAGE_DECODE, send)
                dead += 1
                continue
            rows.append(item.row)
            good.append(record)
            decoded.append(item)
        width = len(self.scorer.schema.feature_names)
        features = np.asarray(rows, dtype=np.float64).reshape(len(rows), width)
        scores = np.empty(0, dtype=np.float64)
        alerts = 0
        threshold = float(self.scorer.threshold)
        if rows:
            scores, alerts, unscorable = self._score(good, decoded, features, send)
            dead += unscorable
        return ScoredBatch(len(batch), features, scores, threshold, alerts, dead)

    def _score(
        self, records: list[Any], decoded: list[Any], X: np.ndarray, send: Send
    ) -> tuple[np.ndarray, int, int]:
        started = time.perf_counter()
        components = self.scorer.score_components(X)
        seconds = time.perf_counter() - started
        self.metrics.scoring_duration.observe(seconds)
        scores = np.asarray(components.score, dtype=np.float64)
        threshold = float(self.scorer.threshold)
        version = int(self.scorer.threshold_version)
        finite = np.isfinite(scores)
        dead = 0
        if not finite.all():
            for i in np.flatnonzero(~finite):
                error = RecordError(UNSCORABLE, "the model gave a non-finite score for this record")
                self._dead_letter(records[i], error, STAGE_SCORE, send)
                dead += 1
        scored = len(records) - dead
        self.metrics.scored.inc(scored)
        self.metrics.score.observe_many(scores[finite])
        names = components.component_names()
        columns = {name: np.asarray(components.component(name), dtype=np.float64) for name in names}
        scored_ms = int(time.time() * 1000)
        flags = finite & self.scorer.decide(scores)
        anomalous = np.flatnonzero(flags)
        if anomalous.size:
            chosen = [records[i] for i in anomalous]
            values = self.alerts.encode_alerts(
                [source_of(record) for record in chosen],
                [decoded[i].record_id for i in anomalous],
                [decoded[i].fields for i in anomalous],
                scores[anomalous],
                {name: col[anomalous] for name, col in columns.items()},
                np.asarray(components.contributions)[anomalous],
                threshold,
                version,
                scored_ms,
            )
            send(self.config.alert_topic, [record.key for record in chosen], values, None)
        self.metrics.alerts.inc(len(anomalous))
        if self.config.scores_topic and scored:
            kept = np.flatnonzero(finite)
            chosen = records if scored == len(records) else [records[i] for i in kept]
            values = self.alerts.encode_score_messages(
                [source_of(record) for record in chosen],
                [decoded[i].record_id for i in kept],
                scores[kept],
                {name: col[kept] for name, col in columns.items()},
                threshold,
                version,
                scored_ms,
            )
            send(self.config.scores_topic, [record.key for record in chosen], values, None)
            self.metrics.scores_published.inc(scored)
        if self.shadow is not None:
            ids = [item.record_id for item in decoded]
            self.shadow.score(records, ids, X, scores, flags, seconds, send, scored_ms)
        stamps = np.fromiter((r.timestamp for r in records), dtype=np.float64, count=len(records))
        stamps = stamps[finite & (stamps >= 0)]
        if stamps.size:
            self.metrics.end_to_end_latency.observe_many(time.time() - stamps / 1000.0)
        return scores, len(anomalous), dead

    def _dead_letter(self, record: Any, error: RecordError, stage: bytes, send: Send) -> None:
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
        send(self.config.dlq_topic, [record.key], [record.value], [headers])
        self.metrics.dead_lettered.labels(reason=error.reason).inc()


def _class_name(error: BaseException) -> str:
    kind = type(error)
    return f"{kind.__module__}.{kind.__qualname__}"
