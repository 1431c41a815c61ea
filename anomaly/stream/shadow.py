"""Shadow scoring (``anomaly serve --shadow-bundle``): a challenger bundle scores every
record of every batch beside the live one, and never alerts.

Per batch, the challenger scores the same decoded rows the live bundle scored; its score
messages (the score schema, its own model name, version and threshold) go to
``--shadow-scores-topic`` through the same checkpoint as the batch's other outputs, so they
are committed (or, with exactly-once, made visible) together with the input offsets. Its
would-be alerts are only counted.

The comparison with the live bundle covers the last ``shadow_window_records`` records both
scored: each bundle's alert rate, the Jaccard overlap of the records they alert on, the
Spearman rank correlation of the two scores, and the challenger's own drift against its
reference (does the traffic look like what it was trained on?). It is published as
``anomaly_shadow_*`` gauges and written, every ``threshold_refresh_s`` and at shutdown, to
the shadow report file (``SHADOW_BUNDLE.shadow.json`` beside the bundle, never in it: a file
added to a signed bundle would stop it verifying), which is the evidence ``anomaly promote``
judges. The window starts again whenever either bundle or either threshold changes: the
evidence is always about the pair that is running.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from anomaly.bundle.bundle import write_json_atomic
from anomaly.errors import AnomalyError
from anomaly.stream.alerts import AlertBuilder, source_of
from anomaly.stream.config import ConfigError, ServeConfig
from anomaly.stream.drift import drift_monitor
from anomaly.stream.metrics import Metrics

log = logging.getLogger(__name__)

REPORT_FORMAT = 1


class ShadowComparison:
    """Live against shadow over the last ``window`` records both scored."""

    def __init__(self, window: int):
        if window < 1:
            raise ValueError(f"shadow window must be at least 1 record, got {window}")
        self.window = window
        self._batches: deque[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = deque()
        self.records = 0

    def reset(self) -> None:
        """Forget the window (a bundle or a threshold changed)."""
        self._batches.clear()
        self.records = 0

    def add(
        self,
        live_scores: np.ndarray,
        shadow_scores: np.ndarray,
        live_flags: np.ndarray,
        shadow_flags: np.ndarray,
    ) -> None:
        """One batch's records (finite under both bundles); the oldest batches fall out."""
        n = len(live_scores)
        if n == 0:
            return
        self._batches.append(
            (
                np.asarray(live_scores, dtype=np.float64),
                np.asarray(shadow_scores, dtype=np.float64),
                np.asarray(live_flags, dtype=bool),
                np.asarray(shadow_flags, dtype=bool),
            )
        )
        self.records += n
        while self.records - len(self._batches[0][0]) >= self.window:
            self.records -= len(self._batches.popleft()[0])

    def summary(self) -> dict[str, Any]:
        """Alert rates, Jaccard overlap and Spearman correlation over the window (None where
        the window is empty or a score is constant)."""
        if not self.records:
            return {
                "records": 0,
                "alert_rate": {"live": None, "shadow": None},
                "alerts": {"live": 0, "shadow": 0, "both": 0},
                "alert_jaccard": None,
                "score_rank_correlation": None,
            }
        live, shadow, live_flags, shadow_flags = (
            np.concatenate([batch[i] for batch in self._batches]) for i in range(4)
        )
        both = int((live_flags & shadow_flags).sum())
        either = int((live_flags | shadow_flags).sum())
        return {
            "records": self.records,
            "alert_rate": {
                "live": float(live_flags.mean()),
                "shadow": float(shadow_flags.mean()),
            },
            "alerts": {
                "live": int(live_flags.sum()),
                "shadow": int(shadow_flags.sum()),
                "both": both,
            },
            # two bundles that both stay silent agree on every record
            "alert_jaccard": both / either if either else 1.0,
            "score_rank_correlation": spearman(live, shadow),
        }


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None when undefined."""
    if len(a) < 2:
        return None
    from scipy.stats import rankdata

    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _identity(bundle: Any) -> dict[str, Any]:
    return {
        "path": os.path.realpath(bundle.path),
        "name": bundle.model_name,
        "version": bundle.model_version,
        "threshold": float(bundle.threshold),
        "threshold_version": int(bundle.threshold_version),
    }


def require_same_features(live: Any, shadow: Any) -> None:
    """A challenger scores the live bundle's decoded rows: it must read the same features."""
    if list(shadow.schema.feature_names) != list(live.schema.feature_names):
        raise ConfigError(
            f"shadow bundle {shadow.path} reads other features than the live bundle "
            f"{live.path} (a challenger must share the live schema, in the same order)"
        )


class Shadow:
    """The challenger of a running serve: scores, publishes, compares, reports."""

    def __init__(self, config: ServeConfig, bundle: Any, metrics: Metrics):
        self.config = config
        self.metrics = metrics
        self.report_path = config.shadow_report_path
        self.comparison = ShadowComparison(config.shadow_window_records)
        self.use(bundle)

    def use(self, bundle: Any) -> None:
        """Score with ``bundle`` from the next batch on (start-up, or a hot swap)."""
        self.bundle = bundle
        self.builder = AlertBuilder(
            bundle.model_name, bundle.model_version, bundle.schema.feature_names
        )
        self.drift = drift_monitor(
            bundle, self.metrics, self.config.drift_window_records, shadow=True
        )
        self.metrics.shadow_info.info({"name": bundle.model_name, "version": bundle.model_version})
        self.metrics.shadow_threshold.set(float(bundle.threshold))
        self.restart()

    def restart(self) -> None:
        """Start the comparison again (either side changed)."""
        self.comparison.reset()
        self.seconds = {"live": 0.0, "shadow": 0.0}
        self.compared = 0
        self.started_at = time.time()

    def warm_up(self, sizes: Sequence[int]) -> None:
        """Trace the challenger's scoring graph for each batch size before it is used."""
        width = len(self.bundle.schema.feature_names)
        for size in sizes:
            self.bundle.score_components(np.zeros((size, width), dtype=np.float64))

    def score(
        self,
        records: Sequence[Any],
        record_ids: Sequence[Any],
        X: np.ndarray,
        live_scores: np.ndarray,
        live_flags: np.ndarray,
        live_seconds: float,
        send: Any,
        scored_ms: int,
    ) -> None:
        """Score the batch's decoded rows ``X`` with the challenger; publish its scores and
        add the records both bundles scored (finite) to the comparison."""
        started = time.perf_counter()
        components = self.bundle.score_components(X)
        seconds = time.perf_counter() - started
        self.metrics.shadow_scoring_duration.observe(seconds)
        self.seconds["live"] += live_seconds
        self.seconds["shadow"] += seconds
        scores = np.asarray(components.score, dtype=np.float64)
        finite = np.isfinite(scores)
        flags = finite & np.asarray(self.bundle.decide(scores), dtype=bool)
        kept = np.flatnonzero(finite)
        self.metrics.shadow_scored.inc(kept.size)
        self.metrics.shadow_alerts.inc(int(flags.sum()))
        topic = self.config.shadow_scores_topic
        if topic and kept.size:
            chosen = [records[i] for i in kept]
            names = components.component_names()
            values = self.builder.encode_score_messages(
                [source_of(record) for record in chosen],
                [record_ids[i] for i in kept],
                scores[kept],
                {name: np.asarray(components.component(name))[kept] for name in names},
                float(self.bundle.threshold),
                int(self.bundle.threshold_version),
                scored_ms,
            )
            send(topic, [record.key for record in chosen], values, None)
            self.metrics.shadow_published.inc(kept.size)
        both = finite & np.isfinite(live_scores)
        self.comparison.add(live_scores[both], scores[both], live_flags[both], flags[both])
        self.compared += int(both.sum())
        if self.drift is not None:
            self.drift.observe(X, scores)

    def refresh_threshold(self) -> None:
        """Pick up a threshold change of the challenger (``anomaly threshold`` on it)."""
        before = float(self.bundle.threshold)
        try:
            changed = self.bundle.refresh_threshold()
        except AnomalyError as exc:
            log.error(
                "could not re-read the shadow threshold; keeping the current one",
                extra={"event": "shadow_threshold_reload_failed", "error": str(exc)},
            )
            return
        if changed:
            self.metrics.shadow_threshold.set(float(self.bundle.threshold))
            self.restart()
            log.info(
                "shadow threshold reloaded",
                extra={
                    "event": "shadow_threshold_reloaded",
                    "previous": before,
                    "threshold": float(self.bundle.threshold),
                    "threshold_version": int(self.bundle.threshold_version),
                },
            )

    def publish(self, live: Any) -> dict[str, Any]:
        """Set the comparison gauges and write the report file; returns the report."""
        summary = self.comparison.summary()
        m = self.metrics
        m.shadow_window.set(summary["records"])
        for role in ("live", "shadow"):
            rate = summary["alert_rate"][role]
            m.shadow_alert_ratio.labels(role=role).set(float("nan") if rate is None else rate)
        for gauge, key in (
            (m.shadow_jaccard, "alert_jaccard"),
            (m.shadow_rank_correlation, "score_rank_correlation"),
        ):
            gauge.set(float("nan") if summary[key] is None else summary[key])
        report = {
            "format": REPORT_FORMAT,
            "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "written_at_s": time.time(),
            "compared_since_s": self.started_at,
            "input_topic": self.config.input_topic,
            "group": self.config.group,
            "live": _identity(live),
            "shadow": _identity(self.bundle),
            "window": {"records": summary["records"], "size": self.comparison.window},
            "records_compared": self.compared,
            **{k: summary[k] for k in ("alert_rate", "alerts", "alert_jaccard")},
            "score_rank_correlation": summary["score_rank_correlation"],
            "drift": self._drift(),
            "scoring_seconds": dict(self.seconds),
        }
        if self.report_path is not None:
            try:
                write_json_atomic(self.report_path, report)
            except OSError as exc:
                log.error(
                    "cannot write the shadow report %s: %s",
                    self.report_path,
                    exc,
                    extra={"event": "shadow_report_failed"},
                )
        return report

    def _drift(self) -> dict[str, Any] | None:
        if self.drift is None or not self.drift.records:
            return None
        values = self.drift.current()
        features = {k: v for k, v in values.items() if k != "score"}
        worst = max(features, key=features.get) if features else None
        return {
            "records": self.drift.records,
            "score_psi": values["score"],
            "feature_psi_max": features[worst] if worst else None,
            "feature_max": worst,
        }
