"""Alert-threshold calibration: fit a threshold on scores without retraining the model.

- ``quantile``: the (1 - target FPR) quantile of scores on normal data;
- ``pot``: peaks-over-threshold, a generalised Pareto tail fitted to the excesses over a high
  initial quantile (Siffer et al., KDD 2017), for FPR targets too small for the empirical
  quantile to be trusted;
- ``f1``: the threshold that maximises F1 on labelled data;
- ``precision``: the highest threshold whose recall still reaches ``at_recall``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anomaly.bundle.decision import exceeds
from anomaly.errors import AnomalyError

METHODS = ("quantile", "pot", "f1", "precision")
NEEDS_LABELS = ("f1", "precision")


@dataclass
class ThresholdFit:
    """A fitted threshold, the method and parameters behind it, and what it implies."""

    value: float
    method: str
    params: dict[str, Any]
    implied: dict[str, Any] = field(default_factory=dict)

    def to_entry(self, data_fingerprint: str) -> dict[str, Any]:
        return {
            "value": self.value,
            "method": self.method,
            "params": self.params,
            "data_fingerprint": data_fingerprint,
            "implied": self.implied,
        }


def quantile_threshold(normal_scores: np.ndarray, target_fpr: float) -> float:
    """Smallest threshold with at most ``target_fpr`` of the normal scores above it: the
    detectors' own rule, so ``fit`` and a refit agree (imported here: detectors/ loads Keras,
    which ``anomaly threshold --history`` does not need)."""
    from detectors.base import quantile_threshold as fitted_quantile

    _check_fpr(target_fpr)
    if np.size(normal_scores) == 0:
        raise AnomalyError("no normal scores to calibrate a threshold on")
    return fitted_quantile(normal_scores, target_fpr)


def pot_threshold(
    normal_scores: np.ndarray, target_fpr: float, initial_quantile: float = 0.98
) -> tuple[float, dict[str, float]]:
    """SPOT's initial threshold: z_q = t + sigma/xi * ((q n / N_t)^-xi - 1) (xi != 0)."""
    _check_fpr(target_fpr)
    scores = np.asarray(normal_scores, dtype=np.float64)
    t = float(np.quantile(scores, initial_quantile))
    excesses = scores[scores > t] - t
    if excesses.size < 10:
        raise AnomalyError(
            f"POT needs at least 10 scores above the {initial_quantile:.3f} quantile, "
            f"got {excesses.size}: give more normal data or lower --initial-quantile"
        )
    from scipy import stats  # here: a second of import that --history does not need

    xi, _, sigma = stats.genpareto.fit(excesses, floc=0.0)
    ratio = target_fpr * scores.size / excesses.size
    if abs(xi) < 1e-6:
        value = t - sigma * np.log(ratio)
    else:
        value = t + sigma / xi * (ratio ** (-xi) - 1.0)
    return float(value), {"initial_threshold": t, "xi": float(xi), "sigma": float(sigma)}


def f1_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    precision, recall, thresholds = _pr_curve(scores, labels)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return _strictly_below(thresholds[int(np.argmax(f1[:-1]))])


def precision_at_recall_threshold(
    scores: np.ndarray, labels: np.ndarray, at_recall: float
) -> float:
    if not 0.0 < at_recall <= 1.0:
        raise AnomalyError(f"--at-recall must be in (0, 1], got {at_recall}")
    precision, recall, thresholds = _pr_curve(scores, labels)
    ok = np.flatnonzero(recall[:-1] >= at_recall)
    best = ok[np.argmax(precision[ok])]
    return _strictly_below(thresholds[best])


def _strictly_below(score: float) -> float:
    """scikit-learn flags ``score >= t``; this package flags ``score > t``."""
    return float(np.nextafter(score, -np.inf))


def _pr_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, ...]:
    labels = np.asarray(labels).astype(int)
    if labels.min() == labels.max():
        raise AnomalyError("labelled methods need both normal (0) and anomalous (1) rows")
    from sklearn.metrics import precision_recall_curve

    return precision_recall_curve(labels, scores)


def _check_fpr(target_fpr: float) -> None:
    if not 0.0 < target_fpr < 1.0:
        raise AnomalyError(f"--target-fpr must be in (0, 1), got {target_fpr}")


def implied_rates(
    threshold: float, scores: np.ndarray, labels: np.ndarray | None
) -> dict[str, Any]:
    """What a threshold means on the given data: FPR on normals, recall/precision if labelled."""
    scores = np.asarray(scores, dtype=np.float64)
    flagged = exceeds(scores, threshold)
    if labels is None:
        return {
            "alert_rate": float(flagged.mean()),
            "fpr": float(flagged.mean()),
            "n": int(scores.size),
        }
    labels = np.asarray(labels).astype(bool)
    normals, anomalies = ~labels, labels
    tp = int((flagged & anomalies).sum())
    fp = int((flagged & normals).sum())
    return {
        "alert_rate": float(flagged.mean()),
        "fpr": float(fp / max(1, normals.sum())),
        "recall": float(tp / max(1, anomalies.sum())),
        "precision": float(tp / max(1, tp + fp)),
        "n": int(scores.size),
        "n_anomalies": int(anomalies.sum()),
    }


def fit_threshold(
    method: str,
    scores: np.ndarray,
    labels: np.ndarray | None = None,
    target_fpr: float = 0.01,
    at_recall: float = 0.9,
    initial_quantile: float = 0.98,
) -> ThresholdFit:
    """Fit a threshold by ``method``. Label-free methods use only the normal rows."""
    if method not in METHODS:
        raise AnomalyError(f"unknown threshold method {method!r}; choose one of {METHODS}")
    scores = np.asarray(scores, dtype=np.float64)
    if method in NEEDS_LABELS and labels is None:
        raise AnomalyError(f"--method {method} needs labelled data (--label-column)")
    normal = scores if labels is None else scores[np.asarray(labels).astype(int) == 0]
    params: dict[str, Any]
    if method == "quantile":
        value = quantile_threshold(normal, target_fpr)
        params = {"target_fpr": target_fpr}
    elif method == "pot":
        value, tail = pot_threshold(normal, target_fpr, initial_quantile)
        params = {"target_fpr": target_fpr, "initial_quantile": initial_quantile, **tail}
    elif method == "f1":
        value = f1_threshold(scores, labels)
        params = {}
    else:
        value = precision_at_recall_threshold(scores, labels, at_recall)
        params = {"at_recall": at_recall}
    return ThresholdFit(value, method, params, implied_rates(value, scores, labels))


DEFAULT_MAX_CHANGE = 3.0
DEFAULT_MIN_ALERT_RATE = 1e-4


@dataclass
class ThresholdChange:
    """A proposed threshold next to the live one, both measured on the same data."""

    current: float
    current_version: int
    fit: ThresholdFit
    before: dict[str, Any]

    @property
    def after(self) -> dict[str, Any]:
        return self.fit.implied

    @property
    def rate_factor(self) -> float:
        """How many times the alert rate grows (> 1) or shrinks (< 1); +1 alert smoothing."""
        n = max(1, int(self.before["n"]))
        return (self.after["alert_rate"] + 1 / n) / (self.before["alert_rate"] + 1 / n)

    def refusal(self, max_change: float, min_alert_rate: float) -> str | None:
        """Why this change needs ``--force`` (None when it is within the guard)."""
        if max_change <= 1.0:
            raise AnomalyError(f"--max-change must be above 1, got {max_change}")
        before, after = self.before["alert_rate"], self.after["alert_rate"]
        factor = self.rate_factor
        limits = []
        if factor > max_change or factor < 1.0 / max_change:
            limits.append(f"more than --max-change {max_change:g}x")
        if after < min_alert_rate:
            limits.append(f"below --min-alert-rate {min_alert_rate:g} (alerting all but off)")
        if not limits:
            return None
        if after == 0.0:  # the smoothed factor of a fall to nothing would understate it
            way = "fall to 0 (no score above the new threshold)"
        else:
            way = f"rise {factor:.3g}x" if factor > 1 else f"fall {1 / factor:.3g}x"
        return (
            f"the alert rate on this data would {way} ({before:.4%} -> {after:.4%}), "
            f"{' and '.join(limits)}; check the method and the data (labels switched off on "
            "data with anomalies?), or pass --force"
        )

    def table(self) -> str:
        """Before -> after, one row per measure, on the data the fit used."""
        rows = [("threshold", f"{self.current:.6g}", f"{self.fit.value:.6g}")]
        measures = ("alert_rate", "fpr", "recall", "precision") if "recall" in self.after else ()
        for key in measures or ("alert_rate",):
            if key in self.before and key in self.after:
                rows.append(
                    (key.replace("_", " "), f"{self.before[key]:.4%}", f"{self.after[key]:.4%}")
                )
        labelled = self.after.get("n_anomalies")
        head = f"on {self.after['n']} scores" + (
            f" ({labelled} labelled anomalies)" if labelled is not None else ""
        )
        live = f"v{self.current_version} (live)"
        lines = [head, f"{'':<12} {live:>14} {self.fit.method + ' (new)':>16}"]
        lines += [f"{name:<12} {a:>14} {b:>16}" for name, a, b in rows]
        return "\n".join(lines)


def propose_change(
    current: float,
    current_version: int,
    method: str,
    scores: np.ndarray,
    labels: np.ndarray | None = None,
    population: np.ndarray | None = None,
    **fit_options: Any,
) -> ThresholdChange:
    """Fit a new threshold and measure the live one on the same scores, for the guard.

    ``population``: all the scores of the window when the fit sees only a labelled part of
    it (analyst feedback mostly exists for alerts); alert rates are measured on it.
    """
    fit = fit_threshold(method, scores, labels, **fit_options)
    before = implied_rates(current, scores, labels)
    if population is not None:
        population = np.asarray(population, dtype=np.float64)
        for implied, value in ((before, current), (fit.implied, fit.value)):
            implied["alert_rate"] = float(exceeds(population, value).mean())
            implied["n"] = int(population.size)
    return ThresholdChange(current, current_version, fit, before)


def history_table(history: list[dict[str, Any]]) -> str:
    """The threshold history as a table, oldest first; the last row is live."""
    lines = [
        f"{'version':<8} {'value':>12}  {'method':<9} {'alert rate':>10}  {'timestamp':<25} note"
    ]
    for i, entry in enumerate(history):
        params = entry.get("params", {})
        note = entry.get("note") or ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in params.items()
            if k in ("target_fpr", "at_recall", "to_version")
        )
        if entry.get("source"):
            note = f"{note}; {entry['source']}" if note else entry["source"]
        rate = entry.get("implied", {}).get("alert_rate", entry.get("implied", {}).get("fpr"))
        shown = "" if rate is None else f"{rate:.4%}"
        live = " (live)" if i == len(history) - 1 else ""
        lines.append(
            f"{'v' + str(entry.get('version', i + 1)):<8} {entry['value']:>12.6g}  "
            f"{entry['method']:<9} {shown:>10}  {entry.get('timestamp', ''):<25} {note}{live}"
        )
    return "\n".join(lines)
