"""Shared fixtures. ``kafka_bootstrap`` starts one Tansu broker per test session on a free
loopback port, or uses the broker named by ``KAFKA_BOOTSTRAP`` (host:port) instead."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from anomaly.broker import LocalBroker

# Property tests draw the same examples on every run unless HYPOTHESIS_PROFILE=explore:
# CI stays reproducible, and exploring for new failures is a deliberate run whose finds are
# pinned as explicit regression cases (see tests/test_hostile.py).
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a Kafka-protocol broker for the whole session."""
    external = os.environ.get("KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    log_path = Path(tmp_path_factory.mktemp("tansu")) / "tansu.log"
    with LocalBroker(log_path=log_path) as broker:
        yield broker.bootstrap


def unique_name(prefix: str = "t") -> str:
    """A topic or group name no other test (or earlier run on a shared broker) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Fixture form of ``unique_name``: ``unique("alerts")`` → ``alerts-1f2e…``."""
    return unique_name


def make_tabular_data(n_normal: int = 600, n_anomalies: int = 60, seed: int = 0):
    """Low-rank normal rows (5 features driven by 2 factors) and far-off anomalies."""
    import numpy as np

    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(2, 5))
    normal = rng.normal(size=(n_normal, 2)) @ mixing + 0.05 * rng.normal(size=(n_normal, 5))
    anomalies = rng.normal(size=(n_anomalies, 5)) * 3.0 + 4.0
    return normal, anomalies


FEATURES = ["f0", "f1", "f2", "f3", "amount"]


def train_tiny_bundle(path: Path) -> Path:
    """The suite's tiny tabular GANomaly (features f0..f3, amount), trained for 3 epochs."""
    from anomaly.schema import Schema
    from anomaly.training import train_bundle

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


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the ``train_tiny_bundle`` bundle, shared by the whole session."""
    return train_tiny_bundle(Path(tmp_path_factory.mktemp("bundles")) / "tiny")
