"""Tabular preprocessing fitted on normal training data, used alike by training and scoring.

One object, one ``transform``: the stream, batch scoring and training call the same code, so
there is no train/serve skew. Fitted parameters live in the bundle manifest as plain JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


def signed_log1p(x: np.ndarray) -> np.ndarray:
    """log1p that keeps the sign, so refunds (negative amounts) stay finite and ordered."""
    return np.sign(x) * np.log1p(np.abs(x))


def signed_expm1(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.expm1(np.abs(x))


@dataclass
class TabularPreprocessor:
    """Optional signed log1p on named columns, then standard or robust scaling.

    ``scaler="robust"`` centres on the median and divides by the IQR: heavy-tailed columns
    such as a transaction amount do not squash everything else.
    """

    feature_names: list[str]
    log1p_columns: list[str] = field(default_factory=list)
    scaler: str = "standard"
    centre_: np.ndarray | None = None
    scale_: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.scaler not in ("standard", "robust"):
            raise ValueError(f"scaler must be 'standard' or 'robust', not {self.scaler!r}")
        unknown = sorted(set(self.log1p_columns) - set(self.feature_names))
        if unknown:
            raise ValueError(f"log1p columns not among the features: {', '.join(unknown)}")
        self._log_mask = np.array([n in self.log1p_columns for n in self.feature_names])

    def _log(self, X: np.ndarray) -> np.ndarray:
        if not self._log_mask.any():
            return X
        X = X.copy()
        X[:, self._log_mask] = signed_log1p(X[:, self._log_mask])
        return X

    def fit(self, X: np.ndarray) -> TabularPreprocessor:
        X = self._log(np.asarray(X, dtype=np.float64))
        if self.scaler == "standard":
            centre, scale = X.mean(axis=0), X.std(axis=0)
        else:
            q25, centre, q75 = np.percentile(X, [25, 50, 75], axis=0)
            scale = q75 - q25
        self.centre_ = centre
        self.scale_ = np.where(scale > 1e-12, scale, 1.0)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Original units -> model space (float32)."""
        X = self._log(np.asarray(X, dtype=np.float64))
        return ((X - self.centre_) / self.scale_).astype(np.float32)

    def inverse_transform(self, Z: np.ndarray) -> np.ndarray:
        """Model space -> original units (for generated samples)."""
        X = np.asarray(Z, dtype=np.float64) * self.scale_ + self.centre_
        if self._log_mask.any():
            X[:, self._log_mask] = signed_expm1(X[:, self._log_mask])
        return X

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "tabular",
            "log1p_columns": list(self.log1p_columns),
            "scaler": self.scaler,
            "centre": self.centre_.tolist(),
            "scale": self.scale_.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], feature_names: list[str]) -> TabularPreprocessor:
        pre = cls(feature_names, list(data.get("log1p_columns", [])), data["scaler"])
        pre.centre_ = np.asarray(data["centre"], dtype=np.float64)
        pre.scale_ = np.asarray(data["scale"], dtype=np.float64)
        if pre.centre_.shape != (len(feature_names),) or pre.scale_.shape != pre.centre_.shape:
            raise ValueError("preprocessing parameters do not match the number of features")
        return pre
