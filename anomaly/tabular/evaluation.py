"""Evaluation with labels: ranking quality and the operating point of the bundle's threshold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from anomaly.bundle.decision import exceeds
from anomaly.errors import AnomalyError


def evaluate_scores(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """ROC-AUC, average precision, and precision/recall/F1 + confusion counts at a threshold."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.min() == labels.max():
        raise AnomalyError("evaluation needs both normal (0) and anomalous (1) labels")
    flagged = exceeds(scores, threshold)
    tp = int((flagged & (labels == 1)).sum())
    fp = int((flagged & (labels == 0)).sum())
    fn = int((~flagged & (labels == 1)).sum())
    tn = int((~flagged & (labels == 0)).sum())
    precision = tp / max(1, tp + fp)
    recall = tp / max(1, tp + fn)
    return {
        "n": int(labels.size),
        "n_anomalies": int(labels.sum()),
        "roc_auc": float(roc_auc_score(labels, scores)),
        "average_precision": float(average_precision_score(labels, scores)),
        "threshold": float(threshold),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / max(1e-12, precision + recall),
        "fpr": fp / max(1, fp + tn),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def write_plots(
    scores: np.ndarray, labels: np.ndarray, threshold: float, out_dir: str | Path
) -> list[Path]:
    """ROC, precision-recall and score-histogram PNGs (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(labels).astype(int)
    paths = []

    fpr, tpr, _ = roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(fpr, tpr, label=f"AUC = {roc_auc_score(labels, scores):.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend(loc="lower right")
    paths.append(_save(fig, out / "roc.png"))

    precision, recall, _ = precision_recall_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(recall, precision, label=f"AP = {average_precision_score(labels, scores):.3f}")
    ax.axhline(labels.mean(), color="k", ls="--", lw=0.8, label="prevalence")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall")
    ax.legend(loc="upper right")
    paths.append(_save(fig, out / "pr.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.histogram_bin_edges(scores, bins=60)
    ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label="normal", density=True)
    ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label="anomaly", density=True)
    ax.axvline(threshold, color="r", lw=1.2, label=f"threshold {threshold:.3g}")
    ax.set(xlabel="anomaly score", ylabel="density", title="Score distribution")
    ax.legend()
    paths.append(_save(fig, out / "score_histogram.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
