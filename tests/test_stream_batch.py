"""The stream's batch paths give what the per-record paths gave, byte for byte and value for
value: batch-encoded alerts and score messages, and the bank search after its speed-up."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from anomaly.stream.alerts import AlertBuilder, Source, encode
from anomaly.stream.config import ConfigError, load_serve_config
from anomaly.stream.metrics import Metrics
from anomaly.stream.scoring import BatchScorer
from anomaly.stream.service import blas_threads, frozen_heap
from detectors.memory import MemoryBank

FEATURES = [f"V{i}" for i in range(12)]
COMPONENTS = ("encoder_knn", "discriminator_knn", "reconstruction")


def _batch(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    keys = [f"card-{i}".encode() if i % 4 else b"\xff\x00" + bytes([i % 256]) for i in range(n)]
    keys[1] = None
    # records of one batch share milliseconds; one has no timestamp
    sources = [
        Source("tx", i % 3, 100 + i, None if i == 2 else 1_700_000_000_000 + i // 7, keys[i])
        for i in range(n)
    ]
    record_ids = [None if i % 5 == 0 else (i if i % 2 else f"tx-{i}") for i in range(n)]
    scores = rng.normal(1.0, 1.0, n)
    scores[3] = 1.5  # exactly the threshold: not an anomaly
    columns = {name: rng.normal(size=n) for name in COMPONENTS}
    contributions = rng.exponential(size=(n, len(FEATURES)))
    contributions[::3, 2] = contributions[::3, 5]  # ties keep feature order
    contributions[::11] = 0.0
    fields = [{"V1": float(i), "merchant": f"m{i}", "id": i} for i in range(n)]
    return sources, record_ids, scores, columns, contributions, fields


@pytest.mark.parametrize("top", [0, 3, len(FEATURES)])
def test_batch_alerts_are_the_per_record_alerts_byte_for_byte(top):
    builder = AlertBuilder("fraud", "v1", FEATURES, alert_fields=["merchant"], top_features=top)
    sources, ids, scores, columns, contributions, fields = _batch(60)
    one_by_one = [
        encode(
            builder.alert(
                sources[i],
                ids[i],
                fields[i],
                float(scores[i]),
                {name: float(col[i]) for name, col in columns.items()},
                contributions[i],
                1.5,
                4,
                1_700_000_000_999,
            )
        )
        for i in range(len(sources))
    ]
    batch = builder.encode_alerts(
        sources, ids, fields, scores, columns, contributions, 1.5, 4, 1_700_000_000_999
    )
    assert batch == one_by_one


def test_batch_score_messages_are_the_per_record_messages_byte_for_byte():
    builder = AlertBuilder("fraud", "v1", FEATURES)
    sources, ids, scores, columns, _, _ = _batch(80, seed=1)
    one_by_one = [
        encode(
            builder.score_message(
                sources[i],
                ids[i],
                float(scores[i]),
                {name: float(col[i]) for name, col in columns.items()},
                1.5,
                2,
                1_700_000_000_500,
            )
        )
        for i in range(len(sources))
    ]
    batch = builder.encode_score_messages(sources, ids, scores, columns, 1.5, 2, 1_700_000_000_500)
    assert batch == one_by_one
    assert builder.encode_score_messages([], [], np.empty(0), {}, 1.5, 2, 0) == []


def _scan(bank: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The search as it was before the speed-up: scale after the product, k argmax passes."""
    closeness = query @ bank.T
    closeness *= 2.0
    closeness -= np.einsum("ij,ij->i", bank, bank)[None]
    rows = np.arange(len(query))
    top = np.empty((len(query), k), np.float32)
    nearest = closeness.argmax(axis=1)
    for j in range(k):
        idx = closeness.argmax(axis=1)
        top[:, j] = closeness[rows, idx]
        closeness[rows, idx] = -np.inf
    q_norms = np.einsum("ij,ij->i", query, query)[:, None]
    return np.sqrt(np.maximum(q_norms - top, 0.0)).mean(axis=1), nearest


@pytest.mark.parametrize(("rows", "width", "duplicates"), [(4096, 64, False), (900, 7, True)])
def test_bank_search_answers_exactly_as_the_full_scan(rows, width, duplicates):
    rng = np.random.default_rng(rows)
    train = rng.normal(size=(rows, width)).astype(np.float32)
    query = (rng.normal(size=(500, width)) * 1.5).astype(np.float32)
    if duplicates:  # equal rows and equal distances: the first equal row is the nearest
        train = np.round(train)
        query = np.round(query)
    bank = MemoryBank(5, unit=False).fit(train)
    dist, nearest = bank.neighbours(query)
    ref_dist, ref_nearest = _scan(bank.bank_, query, 5)
    np.testing.assert_array_equal(dist, ref_dist)
    np.testing.assert_array_equal(nearest, ref_nearest)


REQUIRED = {
    "bundle": "/models/b",
    "input_topic": "in",
    "alert_topic": "alerts",
    "dlq_topic": "dlq",
    "group": "g",
}


def test_the_producer_batches_a_whole_micro_batch_unless_told_otherwise():
    assert load_serve_config(REQUIRED, env={}).producer_settings()["batch_size"] == 512 * 1024
    env = {"ANOMALY_PRODUCER__BATCH_SIZE": "16384"}
    assert load_serve_config(REQUIRED, env=env).producer_settings()["batch_size"] == 16384


def test_serving_holds_blas_to_the_configured_threads():
    assert load_serve_config(REQUIRED, env={}).blas_threads == 1
    with pytest.raises(ConfigError, match="blas_threads"):
        load_serve_config({**REQUIRED, "blas_threads": "-1"}, env={})
    with blas_threads(1):
        assert {
            pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"
        } == {1}


class CountingScorer:
    """A scorer that records the batch sizes it was asked to score."""

    def __init__(self) -> None:
        self.schema = type("Schema", (), {"feature_names": FEATURES, "kind": "tabular"})()
        self.model_name, self.model_version = "m", "v"
        self.sizes: list[tuple[int, int]] = []

    def score_components(self, X: np.ndarray) -> None:
        self.sizes.append(X.shape)


def test_warm_up_scores_each_compiled_batch_size_once_before_the_stream():
    scorer = CountingScorer()
    config = load_serve_config({**REQUIRED, "max_batch": 500}, env={})
    BatchScorer(config, scorer, Metrics()).warm_up()
    assert scorer.sizes == [(1, 12), (8, 12), (64, 12), (500, 12)]


def test_the_heap_is_frozen_only_while_serving():
    with frozen_heap():
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
