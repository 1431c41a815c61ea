"""Rolling drift of the served traffic against the bundle's reference (``anomaly.bundle.profile``).

``DriftMonitor`` is a ``StreamService`` observer: each scored batch is binned with the
reference's fixed edges (one ``searchsorted`` per feature), the counts of the last
``window`` records are kept, and the PSI of the score and of every feature is published as
``anomaly_score_drift_psi`` and ``anomaly_feature_drift_psi{feature}``, with the window's
size in ``anomaly_drift_window_records`` (alert only on a full window: a few hundred
records read as drift by chance). Bundles trained before drift references existed serve
without it (one log line).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import numpy as np

from anomaly.bundle.profile import Profile, psi
from anomaly.stream.metrics import DriftGauges, Metrics

log = logging.getLogger(__name__)


class DriftMonitor:
    """PSI of the last ``window`` scored records against a bundle's reference profile."""

    def __init__(
        self,
        profile: Profile,
        metrics: Metrics,
        window: int = 10000,
        gauges: DriftGauges | None = None,
    ) -> None:
        if window < 1:
            raise ValueError(f"drift window must be at least 1 record, got {window}")
        self.profile = profile
        self.metrics = metrics
        self.window = window
        # the live bundle's gauges unless told otherwise (a shadow bundle has its own)
        self.gauges = gauges or metrics.drift_gauges()
        self._batches: deque[tuple[int, np.ndarray, np.ndarray]] = deque()
        self._records = 0
        self._score_counts = np.zeros(len(profile.score_edges) + 1, dtype=np.int64)
        self._feature_counts = [np.zeros(len(e) + 1, dtype=np.int64) for e in profile.feature_edges]
        self._gauges = [self.gauges.feature.labels(feature=n) for n in profile.feature_names]

    def __call__(self, batch: Any) -> None:
        """Observe one ``ScoredBatch`` (the service calls this after every scored batch)."""
        self.observe(batch.features, batch.scores)

    def observe(self, features: np.ndarray, scores: np.ndarray) -> dict[str, float]:
        """Add a batch, drop what fell out of the window, publish and return the PSIs."""
        scores = np.asarray(scores, dtype=np.float64)
        n = int(np.isfinite(scores).sum())
        if n == 0:
            return self.current()
        score_counts, feature_counts = self.profile.counts(features, scores)
        stacked = np.stack(feature_counts) if feature_counts else np.empty((0, 0), np.int64)
        self._batches.append((n, score_counts, stacked))
        self._add(n, score_counts, stacked, 1)
        while self._records - self._batches[0][0] >= self.window:
            self._add(*self._batches.popleft(), -1)
        values = self.current()
        self.gauges.score.set(values["score"])
        for gauge, name in zip(self._gauges, self.profile.feature_names, strict=True):
            gauge.set(values[name])
        self.gauges.window.set(self._records)
        return values

    def _add(self, n: int, score_counts: np.ndarray, stacked: np.ndarray, sign: int) -> None:
        self._records += sign * n
        self._score_counts += sign * score_counts
        for j in range(len(self._feature_counts)):
            self._feature_counts[j] += sign * stacked[j]

    def current(self) -> dict[str, float]:
        """PSI of the score (key ``score``) and each feature over the window."""
        out = {"score": psi(self.profile.score_reference, self._score_counts)}
        for name, ref, counts in zip(
            self.profile.feature_names,
            self.profile.feature_reference,
            self._feature_counts,
            strict=True,
        ):
            out[name] = psi(ref, counts)
        return out

    @property
    def records(self) -> int:
        """Records in the window now."""
        return self._records


def drift_monitor(
    bundle: Any, metrics: Metrics, window: int, shadow: bool = False
) -> DriftMonitor | None:
    """A monitor for ``bundle`` publishing to the live (or shadow) gauges; None (and one log
    line) for a bundle without a drift reference."""
    profile = Profile.from_manifest(getattr(bundle, "manifest", {}) or {})
    if profile is None:
        log.info(
            "drift monitoring off: the %sbundle has no drift reference (trained before it "
            "existed; retrain to get anomaly_*_drift_psi)",
            "shadow " if shadow else "",
            extra={"event": "drift_disabled"},
        )
        return None
    return DriftMonitor(profile, metrics, window, metrics.drift_gauges(shadow))


def attach_drift(service: Any, bundle: Any, window: int) -> DriftMonitor | None:
    """Observe every batch ``service`` scores with a monitor for ``bundle`` (if it can)."""
    monitor = drift_monitor(bundle, service.metrics, window)
    if monitor is not None:
        service.observers.append(monitor)
    return monitor
