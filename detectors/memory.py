"""A nearest-neighbour memory bank of normal feature vectors (the DN2 / PatchCore idea).

Bergman, Cohen and Hoshen (2020, "Deep Nearest Neighbor Anomaly Detection") showed that the
mean distance to the k nearest normal training embeddings is a strong anomaly score; here the
embeddings come from the detector's own networks (no pretrained backbone). Image features
are L2-normalised first (``unit=True``, cosine geometry), which makes the distance blind to
overall exposure and contrast; feature vectors of records keep their magnitude, which is
where a record's anomaly often is (measured: unit-normalising discriminator features of the
ODDS thyroid set drops the kNN ROC-AUC from 0.98 to 0.31).

Exact search in chunks: one BLAS matrix product for the squared distances, then k argmax
passes. Banks hold a few thousand rows, where an exact search needs no index and no extra
library. Re-measured for issue 23 at 500 queries x 4,096 rows x 64 (2-core CPU): product
~1 ms on two BLAS threads, the 5 passes ~1.6 ms, ``argpartition`` over every row ~3.3 ms,
TensorFlow's ``top_k`` ~5 ms; a top-k by groups of rows that reads the product once was
~10 % faster at 500 queries and slower at 2,000, so it was not kept. In the stream the
larger cost was BLAS threads waiting for busy cores (``anomaly.stream.service.blas_threads``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# A bank keeps at most BANK_MAX_ROWS rows and BANK_BUDGET_VALUES float32 values (64 MiB);
# rows beyond either bound are a seeded random subsample. The row bound is what a record's
# query costs in the stream: rows x width multiply-adds plus k passes over the rows.
BANK_BUDGET_VALUES = 1 << 24
BANK_MAX_ROWS = 4096
QUERY_CHUNK = 1024


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to unit L2 norm (all-zero rows stay zero)."""
    flat = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return flat / np.maximum(norms, 1e-12)


class MemoryBank:
    """Normal feature vectors; ``distance`` = mean Euclidean distance to the k nearest."""

    def __init__(self, k: int = 5, unit: bool = True, max_rows: int | None = None) -> None:
        self.k = int(k)
        self.unit = bool(unit)
        self.max_rows = max_rows
        self.bank_: np.ndarray | None = None
        self.kept_: np.ndarray | None = None
        self._sq_norms: np.ndarray | None = None

    def _rows(self, features: np.ndarray) -> np.ndarray:
        if self.unit:
            return unit_rows(features)
        return np.asarray(features, dtype=np.float32).reshape(len(features), -1)

    def fit(self, features: np.ndarray, seed: int | None = 0) -> MemoryBank:
        """Keep the rows of ``features`` (a seeded subsample beyond the budget); ``kept_``
        holds the indices of the rows kept."""
        bank = self._rows(features)
        keep = np.arange(len(bank))
        row_cap = self.max_rows or BANK_MAX_ROWS
        max_rows = max(self.k + 1, min(row_cap, BANK_BUDGET_VALUES // max(1, bank.shape[1])))
        if len(bank) > max_rows:
            keep = np.sort(np.random.default_rng(seed).choice(len(bank), max_rows, replace=False))
            bank = bank[keep]
        self.kept_ = keep
        self._set(bank)
        return self

    def _set(self, bank: np.ndarray) -> None:
        self.bank_ = np.ascontiguousarray(bank, dtype=np.float32)
        self._sq_norms = np.einsum("ij,ij->i", self.bank_, self.bank_)

    def neighbours(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean distance to the k nearest, index of the nearest) per row of ``features``."""
        query = self._rows(features)
        k = min(self.k, len(self.bank_))
        dist = np.empty(len(query), np.float32)
        nearest = np.empty(len(query), np.int64)
        for start in range(0, len(query), QUERY_CHUNK):
            q = query[start : start + QUERY_CHUNK]
            # |q - b|^2 = |q|^2 - (2 q.b - |b|^2): rank by the bracket. Doubling q before the
            # product is exact (a power of two), so it equals 2 (q.b) bit for bit and saves
            # a pass over the product; the subtraction is in place.
            closeness = (q * np.float32(2.0)) @ self.bank_.T
            closeness -= self._sq_norms[None]
            rows = np.arange(len(q))
            top = np.empty((len(q), k), np.float32)
            # k is small: k vectorised argmax passes beat argpartition / top_k by 5-20x
            for j in range(k):
                idx = closeness.argmax(axis=1)
                top[:, j] = closeness[rows, idx]
                closeness[rows, idx] = -np.inf
                if j == 0:
                    nearest[start : start + len(q)] = idx
            q_norms = np.einsum("ij,ij->i", q, q)[:, None]
            dist[start : start + len(q)] = np.sqrt(np.maximum(q_norms - top, 0.0)).mean(axis=1)
        return dist, nearest

    def distance(self, features: np.ndarray) -> np.ndarray:
        return self.neighbours(features)[0]

    def save(self, path: Path) -> Path:
        np.savez(path, bank=self.bank_, k=np.asarray(self.k), unit=np.asarray(self.unit))
        return path

    @classmethod
    def load(cls, path: Path) -> MemoryBank:
        with np.load(path, allow_pickle=False) as data:
            bank = cls(int(data["k"]), bool(data["unit"]))
            bank._set(data["bank"])
        return bank


class KernelBoundary:
    """A one-class SVM boundary around normal feature vectors (Schölkopf et al. 2001).

    The banks' k-nearest-neighbour distance is local: with a few hundred to a few thousand
    normal records in tens of dimensions, the 5 nearest neighbours are a noisy density
    estimate. The one-class SVM is a smooth, global boundary (RBF kernel, width from the
    data's own variance as in scikit-learn's ``gamma="scale"``), the complementary view
    (ADBench: no single family wins everywhere; the one-class SVM leads on some sets where
    kNN trails). Fitted with scikit-learn; scored here in NumPy from the support vectors, so
    a bundle holds plain arrays and scoring needs no pickle.

    ``nu`` = 0.05: the fraction of training records allowed outside the boundary; the data
    are meant to be normal, so a small value. Cost per record: one RBF kernel row against
    the support vectors (typically 5-10 % of the rows; ~100-300 here).
    """

    def __init__(self, nu: float = 0.05) -> None:
        self.nu = float(nu)
        self.support_: np.ndarray | None = None
        self.coef_: np.ndarray | None = None
        self.gamma_: float = 0.0
        self.offset_: float = 0.0

    def fit(self, features: np.ndarray) -> KernelBoundary:
        from sklearn.svm import OneClassSVM

        rows = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
        gamma = 1.0 / (rows.shape[1] * max(float(rows.var()), 1e-12))  # gamma="scale"
        svm = OneClassSVM(kernel="rbf", gamma=gamma, nu=self.nu).fit(rows)
        self._set(svm.support_vectors_, svm.dual_coef_.ravel(), gamma)
        self.offset_ = float(svm.intercept_[0])
        return self

    def _set(self, support: np.ndarray, coef: np.ndarray, gamma: float) -> None:
        self.support_ = np.ascontiguousarray(support, dtype=np.float32)
        self.coef_ = np.asarray(coef, dtype=np.float32)
        self.gamma_ = float(gamma)
        self._sq_norms = np.einsum("ij,ij->i", self.support_, self.support_)

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Outside-ness: -(decision function); higher = further outside the normal boundary."""
        query = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
        out = np.empty(len(query), np.float32)
        for start in range(0, len(query), QUERY_CHUNK):
            q = query[start : start + QUERY_CHUNK]
            sq = np.einsum("ij,ij->i", q, q)[:, None] - 2.0 * (q @ self.support_.T)
            sq += self._sq_norms[None]
            kernel = np.exp(-self.gamma_ * np.maximum(sq, 0.0))
            out[start : start + len(q)] = -(kernel @ self.coef_ + self.offset_)
        return out

    def save(self, path: Path) -> Path:
        np.savez(
            path,
            support=self.support_,
            coef=self.coef_,
            gamma=np.asarray(self.gamma_),
            offset=np.asarray(self.offset_),
            nu=np.asarray(self.nu),
        )
        return path

    @classmethod
    def load(cls, path: Path) -> KernelBoundary:
        with np.load(path, allow_pickle=False) as data:
            boundary = cls(float(data["nu"]))
            boundary._set(data["support"], data["coef"], float(data["gamma"]))
            boundary.offset_ = float(data["offset"])
        return boundary
