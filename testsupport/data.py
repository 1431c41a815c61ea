"""Small generated data sets and bundles that tests and benchmarks share."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np


def unique_name(prefix: str = "t") -> str:
    """A topic or group name no other test (or earlier run on a shared broker) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def make_tabular_data(
    n_normal: int = 600, n_anomalies: int = 60, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Low-rank normal rows (5 features driven by 2 factors) and far-off anomalies."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(2, 5))
    normal = rng.normal(size=(n_normal, 2)) @ mixing + 0.05 * rng.normal(size=(n_normal, 5))
    anomalies = rng.normal(size=(n_anomalies, 5)) * 3.0 + 4.0
    return normal, anomalies


FEATURES = ["f0", "f1", "f2", "f3", "amount"]


def train_tiny_bundle(path: Path) -> Path:
    """The suite's tiny tabular GANomaly (features f0..f3, amount), trained for 3 epochs."""
    from anomaly.bundle.schema import Schema
    from anomaly.bundle.training import train_bundle

    normal, _ = make_tabular_data()
    normal[:, 4] = abs(normal[:, 4]) * 100
    train_bundle(
        normal,
        path,
        Schema.tabular(FEATURES),
        detector_params={"epochs": 3, "batch_size": 64, "hidden": (16, 8)},
        log1p_columns=["amount"],
        target_fpr=0.05,
        seed=0,
        name="tiny",
    )
    return path
