"""The reference distribution a bundle is monitored against: binned features and scores.

At train time each input feature (original units, over every normal row: a feature's values
do not depend on the fit) and the score (over the held-out calibration split: training rows
score low) are cut into ``BINS`` bins at their deciles; the bundle stores the bin edges and
the proportion of reference rows in each bin. Live data is binned with the same edges and
compared by the population stability index,

    PSI = sum_i (p_i - q_i) * ln(p_i / q_i)

(p live, q reference, both floored at ``FLOOR``): 0 for the same distribution; by the usual
rule of thumb under 0.1 is stable, 0.1-0.25 a moderate shift, above 0.25 a major one. A
window of n live rows against m reference rows reads about (BINS - 1) * (1/n + 1/m) by
chance alone, so judge windows of a thousand rows or more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

BINS = 10
FLOOR = 1e-4
MAJOR_SHIFT = 0.25


def bin_edges(values: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Interior bin edges at the quantiles of ``values`` (ties merged)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.empty(0)
    return np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """How many values fall in each of the ``len(edges) + 1`` bins (right-closed)."""
    index = np.searchsorted(edges, np.asarray(values, dtype=np.float64), side="left")
    return np.bincount(index, minlength=len(edges) + 1)


def psi(reference: np.ndarray, counts: np.ndarray) -> float:
    """Population stability index of live bin ``counts`` against reference proportions."""
    total = counts.sum()
    if total == 0:
        return 0.0
    p = np.maximum(counts / total, FLOOR)
    q = np.maximum(np.asarray(reference, dtype=np.float64), FLOOR)
    return float(np.sum((p - q) * np.log(p / q)))


def _summary(values: np.ndarray) -> dict[str, Any]:
    edges = bin_edges(values)
    counts = bin_counts(values, edges)
    return {"edges": edges.tolist(), "proportions": (counts / max(1, counts.sum())).tolist()}


def build_profile(
    features: np.ndarray | None, feature_names: list[str], scores: np.ndarray
) -> dict[str, Any]:
    """The manifest's ``drift_reference``: binned score and (tabular) feature distributions."""
    profile: dict[str, Any] = {
        "method": "psi",
        "bins": BINS,
        "score": {**_summary(scores), "rows": int(len(scores)), "split": "calibration"},
        "features": {},
    }
    if features is not None:
        features = np.asarray(features, dtype=np.float64)
        profile["feature_rows"] = int(len(features))
        profile["features"] = {
            name: _summary(features[:, j]) for j, name in enumerate(feature_names)
        }
    return profile


@dataclass
class Profile:
    """A bundle's drift reference, ready to bin live batches."""

    score_edges: np.ndarray
    score_reference: np.ndarray
    feature_names: list[str]
    feature_edges: list[np.ndarray]
    feature_reference: list[np.ndarray]

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> Profile | None:
        """None for bundles trained before drift references existed."""
        data = manifest.get("drift_reference")
        if not data:
            return None
        names = list(data.get("features", {}))
        return cls(
            np.asarray(data["score"]["edges"], dtype=np.float64),
            np.asarray(data["score"]["proportions"], dtype=np.float64),
            names,
            [np.asarray(data["features"][n]["edges"], dtype=np.float64) for n in names],
            [np.asarray(data["features"][n]["proportions"], dtype=np.float64) for n in names],
        )

    def counts(self, features: np.ndarray | None, scores: np.ndarray) -> tuple[np.ndarray, list]:
        """Bin counts of a batch: (score counts, one count array per feature)."""
        scores = np.asarray(scores, dtype=np.float64)
        keep = np.isfinite(scores)
        score_counts = bin_counts(scores[keep], self.score_edges)
        if features is None or not self.feature_names:
            return score_counts, []
        X = np.asarray(features, dtype=np.float64)[keep]
        return score_counts, [
            bin_counts(X[:, j], edges) for j, edges in enumerate(self.feature_edges)
        ]

    def compare(self, features: np.ndarray | None, scores: np.ndarray) -> dict[str, float]:
        """PSI of the score (key ``score``) and of every feature for one set of rows."""
        score_counts, feature_counts = self.counts(features, scores)
        out = {"score": psi(self.score_reference, score_counts)}
        for name, ref, counts in zip(
            self.feature_names, self.feature_reference, feature_counts, strict=False
        ):
            out[name] = psi(ref, counts)
        return out
