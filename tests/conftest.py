"""Shared fixtures. ``kafka_bootstrap`` starts one Tansu broker per test session on a free
loopback port, or uses the broker named by ``KAFKA_BOOTSTRAP`` (host:port) instead."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from anomaly.demo.broker import LocalBroker
from testsupport.data import train_tiny_bundle, unique_name

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


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Fixture form of ``unique_name``: ``unique("alerts")`` → ``alerts-1f2e…``."""
    return unique_name


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the ``train_tiny_bundle`` bundle, shared by the whole session."""
    return train_tiny_bundle(Path(tmp_path_factory.mktemp("bundles")) / "tiny")
