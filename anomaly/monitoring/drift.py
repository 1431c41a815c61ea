"""``anomaly drift``: the service's drift comparison, offline, for a file or a topic."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anomaly.bundle.profile import MAJOR_SHIFT, Profile
from anomaly.errors import AnomalyError
from anomaly.monitoring.scores import read_topic

MODERATE_SHIFT = 0.1


@dataclass
class DriftReport:
    """PSI per feature and for the score, for ``n`` rows from ``source``."""

    psi: dict[str, float]
    n: int
    source: str

    def verdict(self, value: float) -> str:
        if value > MAJOR_SHIFT:
            return "major shift"
        return "moderate shift" if value > MODERATE_SHIFT else "stable"

    @property
    def worst(self) -> float:
        return max(self.psi.values())

    def table(self) -> str:
        """The score first, then features from the most to the least shifted."""
        lines = [
            f"drift of {self.n} records from {self.source} against the bundle's reference",
            f"{'':<20} {'PSI':>8}  verdict",
        ]
        order = ["score"] + sorted(
            (k for k in self.psi if k != "score"), key=lambda k: -self.psi[k]
        )
        for name in order:
            if name in self.psi:
                value = self.psi[name]
                lines.append(f"{name:<20} {value:>8.4f}  {self.verdict(value)}")
        return "\n".join(lines)


def profile_of(bundle: Any) -> Profile:
    profile = Profile.from_manifest(bundle.manifest)
    if profile is None:
        raise AnomalyError(
            f"{bundle.path}: the bundle has no drift reference (trained before it existed); "
            "retrain it to compare drift"
        )
    return profile


def drift_of_rows(bundle: Any, X: np.ndarray, source: str) -> DriftReport:
    """Score ``X`` (original units) with the bundle and compare features and score."""
    profile = profile_of(bundle)
    scores = np.asarray(bundle.score_components(X).score, dtype=np.float64)
    return DriftReport(profile.compare(X, scores), int(len(X)), source)


def drift_of_file(bundle: Any, data: Path) -> DriftReport:
    from anomaly.tabular.readers import read_table

    profile_of(bundle)  # refuse an old bundle before reading the data
    if bundle.schema.kind != "tabular":
        raise AnomalyError(
            f"{bundle.path}: an image bundle's drift is its score's: use --from-topic on "
            "a scores topic"
        )
    table = read_table(data, bundle.schema.feature_names, None, None, "auto")
    return drift_of_rows(bundle, table.X, f"file {data}")


def drift_of_topic(
    bundle: Any, bootstrap_servers: str, topic: str, last: int | None = None
) -> DriftReport:
    """Records of an input topic (features and score) or a scores topic (score only)."""
    profile = profile_of(bundle)
    messages = [m for _, m in read_topic(bootstrap_servers, topic, last=last)]
    messages = [m for m in messages if isinstance(m, dict)]
    names = bundle.schema.feature_names
    if messages and all("score" in m and "alert_id" in m for m in messages):
        mine = [
            m for m in messages if str(m.get("model", {}).get("version")) == bundle.model_version
        ]
        if not mine:
            raise AnomalyError(f"topic {topic}: no scores of model version {bundle.model_version}")
        scores = np.array([float(m["score"]) for m in mine])
        psi = profile.compare(None, scores)
        return DriftReport(psi, len(mine), f"scores topic {topic} (score only)")
    rows = []
    for m in messages:
        try:
            rows.append([float(m[name]) for name in names])
        except (KeyError, TypeError, ValueError):
            continue
    if not rows:
        raise AnomalyError(f"topic {topic}: no records with the bundle's features {names[:3]}...")
    X = np.asarray(rows, dtype=np.float64)
    X = X[np.isfinite(X).all(axis=1)]
    return drift_of_rows(bundle, X, f"topic {topic}")
