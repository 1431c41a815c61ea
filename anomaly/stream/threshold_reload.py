"""Threshold hot reload: ``Bundle.refresh_threshold()`` (a stat of the manifest) every
``threshold_refresh_s`` (the loop's clock, ``anomaly.stream.service``); a change is logged
and counted in ``anomaly_threshold_reloads_total``, and the next batch uses it."""

from __future__ import annotations

import logging

from anomaly.errors import AnomalyError
from anomaly.stream.metrics import Metrics
from anomaly.stream.scoring import Scorer

log = logging.getLogger(__name__)


class ThresholdWatcher:
    """Publishes the scorer's threshold and re-reads it when asked (the loop asks every
    ``threshold_refresh_s``, between batches)."""

    def __init__(self, scorer: Scorer, metrics: Metrics):
        self.scorer = scorer
        self.metrics = metrics

    def publish(self) -> None:
        """Set the threshold gauges from the scorer."""
        self.metrics.set_threshold(
            float(self.scorer.threshold),
            int(self.scorer.threshold_version),
            self.scorer.expected_anomaly_rate,
        )

    def refresh(self) -> None:
        """Re-read the threshold; a change is logged, counted and published."""
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
            self.publish()
            log.info(
                "threshold reloaded",
                extra={
                    "event": "threshold_reloaded",
                    "previous": before,
                    "threshold": float(self.scorer.threshold),
                    "threshold_version": int(self.scorer.threshold_version),
                },
            )
