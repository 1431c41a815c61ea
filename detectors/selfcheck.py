"""A label-free self-check: does each score component rank corrupted normals above normals?

Nothing here sees a real anomaly. Normal validation records are corrupted locally, in the
spirit of CutPaste (Li et al. 2021) and the synthetic anomalies of OCR-GAN / AGAD: for images
a patch cut from another normal image is pasted at a random place; for feature vectors a
random subset of features takes the values of another normal record (each value plausible,
the combination not). A component that scores these corruptions *lower* than the untouched
records is inverted on this data and must not enter the combined score silently.
"""

from __future__ import annotations

import numpy as np


def corrupt(X: np.ndarray, seed: int | None = 0) -> np.ndarray:
    """A locally corrupted copy of every row of ``X`` (images NHWC or feature vectors)."""
    rng = np.random.default_rng(seed)
    X = np.asarray(X, dtype=np.float32)
    out = X.copy()
    n = len(X)
    donors = rng.integers(0, n, size=n)
    if X.ndim == 4:
        _, h, w, _ = X.shape
        for i in range(n):
            ph = int(rng.integers(max(1, h // 4), max(2, h // 2) + 1))
            pw = int(rng.integers(max(1, w // 4), max(2, w // 2) + 1))
            sy, sx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
            ty, tx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
            out[i, ty : ty + ph, tx : tx + pw] = X[donors[i], sy : sy + ph, sx : sx + pw]
        return out
    d = X.shape[1]
    for i in range(n):
        k = int(rng.integers(1, max(1, d // 3) + 1))
        cols = rng.choice(d, size=k, replace=False)
        out[i, cols] = X[donors[i], cols]
    return out


def auroc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    """Probability that an anomalous value exceeds a normal one (ties count half)."""
    values = np.concatenate([normal, anomalous]).astype(np.float64)
    order = values.argsort(kind="mergesort")
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    sorted_values = values[order]
    # average ranks over ties
    _, start, counts = np.unique(sorted_values, return_index=True, return_counts=True)
    for s, c in zip(start, counts, strict=True):
        if c > 1:
            ranks[order[s : s + c]] = s + (c + 1) / 2.0
    n0, n1 = len(normal), len(anomalous)
    return float((ranks[n0:].sum() - n1 * (n1 + 1) / 2.0) / (n0 * n1))
