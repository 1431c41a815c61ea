"""The stream's batch paths give what the per-record paths gave, byte for byte and value for
value: batch-encoded alerts and score messages, and the bank search after its speed-up."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.memory import MemoryBank


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
