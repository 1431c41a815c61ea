"""Synthetic card transactions shaped like the ULB credit-card data, with labelled fraud.

The real data (``V1``..``V28`` are PCA components of hidden card features, ``Amount`` is
in euros) cannot ship with the package, so the demo, the tests and the stream benchmark use
this generator instead. It keeps the properties that matter to an anomaly detector:

* normal transactions live near a low-dimensional manifold: six latent factors drive all 28
  ``V`` columns through a fixed random mixing matrix, plus small noise, with the column
  variances decreasing like PCA components;
* ``Amount`` is log-normal and depends on two of the latent factors (so amount and
  behaviour correlate);
* fraud (``label`` 1) comes in three documented patterns, each leaving the manifold in its
  own way:

  - ``card_testing``: many tiny amounts (0.5-2) with a shift along a few components;
  - ``account_takeover``: large amounts with noise orthogonal to the normal manifold;
  - ``skimming``: the ULB signature, strongly negative ``V14``, ``V12``, ``V17``, ``V10``.

Everything is deterministic for a given seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

FEATURES = [f"V{i}" for i in range(1, 29)] + ["Amount"]
PATTERNS = ("card_testing", "account_takeover", "skimming")
_LATENT = 6
_MIX_SEED = 20240917


@dataclass(frozen=True)
class Transactions:
    """Feature matrix (original units), labels (1 = fraud) and the fraud pattern per row."""

    X: np.ndarray
    y: np.ndarray
    pattern: np.ndarray
    feature_names: list[str]

    def __len__(self) -> int:
        return int(self.X.shape[0])


def _mixing() -> tuple[np.ndarray, np.ndarray]:
    """The fixed latent→V mixing matrix and per-column scales (same for every seed)."""
    rng = np.random.default_rng(_MIX_SEED)
    mixing, _ = np.linalg.qr(rng.normal(size=(28, _LATENT)))
    scales = np.linspace(2.0, 0.3, 28)
    return mixing.T, scales


def _normal(rng: np.random.Generator, n: int) -> np.ndarray:
    mixing, scales = _mixing()
    z = rng.normal(size=(n, _LATENT))
    v = (z @ mixing) * np.sqrt(28 / _LATENT) + 0.15 * rng.normal(size=(n, 28))
    v *= scales
    amount = np.exp(3.2 + 0.7 * z[:, 0] - 0.4 * z[:, 1] + 0.35 * rng.normal(size=n))
    return np.column_stack([v, np.round(amount, 2)])


def _fraud(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    X = _normal(rng, n)
    kinds = rng.integers(0, len(PATTERNS), size=n)
    _, scales = _mixing()
    for k, name in enumerate(PATTERNS):
        rows = np.flatnonzero(kinds == k)
        if rows.size == 0:
            continue
        if name == "card_testing":
            X[rows, 28] = np.round(rng.uniform(0.5, 2.0, size=rows.size), 2)
            X[rows, 2:5] += 3.0 * scales[2:5]
        elif name == "account_takeover":
            X[rows, :28] += 2.5 * rng.normal(size=(rows.size, 28)) * scales
            X[rows, 28] = np.round(np.exp(rng.uniform(6.5, 8.0, size=rows.size)), 2)
        else:
            for col, shift in ((13, -7.0), (11, -5.0), (16, -6.0), (9, -4.0)):
                X[rows, col] += shift * rng.uniform(0.6, 1.4, size=rows.size)
    return X, np.asarray(PATTERNS)[kinds]


def generate(n: int, fraud_rate: float = 0.01, seed: int = 0) -> Transactions:
    """``n`` transactions of which about ``fraud_rate`` are fraud, shuffled."""
    if n < 0 or not 0.0 <= fraud_rate <= 1.0:
        raise ValueError("need n >= 0 and 0 <= fraud_rate <= 1")
    rng = np.random.default_rng(seed)
    n_fraud = int(round(n * fraud_rate))
    normal = _normal(rng, n - n_fraud)
    fraud, patterns = _fraud(rng, n_fraud)
    X = np.vstack([normal, fraud])
    y = np.concatenate([np.zeros(n - n_fraud, dtype=np.int8), np.ones(n_fraud, dtype=np.int8)])
    pattern = np.concatenate(
        [np.full(n - n_fraud, "normal", dtype=object), patterns.astype(object)]
    )
    order = rng.permutation(n)
    return Transactions(X[order], y[order], pattern[order], list(FEATURES))


def records(
    data: Transactions, id_prefix: str = "tx", start: int = 0
) -> Iterator[tuple[bytes, bytes]]:
    """(key, JSON value) per transaction, as a producer would send them; ``id`` is the key."""
    import orjson

    names = data.feature_names
    for i, row in enumerate(data.X.tolist(), start=start):
        record_id = f"{id_prefix}-{i}"
        body = dict(zip(names, row, strict=True))
        body["id"] = record_id
        yield record_id.encode(), orjson.dumps(body)
