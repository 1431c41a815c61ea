"""detectors.memory and detectors.selfcheck: exact kNN distances, bounds, persistence."""

from __future__ import annotations

import numpy as np
import pytest

from detectors import memory
from detectors.memory import MemoryBank, unit_rows
from detectors.selfcheck import auroc, corrupt


def _brute_force(bank: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    d = np.linalg.norm(query[:, None, :] - bank[None, :, :], axis=2)
    return np.sort(d, axis=1)[:, :k].mean(axis=1)


@pytest.mark.parametrize("unit", [False, True])
def test_distance_is_the_mean_over_the_k_nearest(unit):
    rng = np.random.default_rng(0)
    train, query = rng.normal(size=(300, 7)), rng.normal(size=(50, 7)) * 2
    bank = MemoryBank(k=5, unit=unit).fit(train)
    dist, nearest = bank.neighbours(query)
    ref_bank, ref_query = (unit_rows(train), unit_rows(query)) if unit else (train, query)
    np.testing.assert_allclose(dist, _brute_force(ref_bank, ref_query, 5), rtol=1e-4, atol=1e-5)
    d = np.linalg.norm(ref_query[:, None, :] - ref_bank[None, :, :], axis=2)
    np.testing.assert_array_equal(nearest, d.argmin(axis=1))


def test_unit_rows_ignore_scale_raw_rows_do_not():
    rng = np.random.default_rng(1)
    train = rng.uniform(0, 1, size=(100, 16))
    brighter = train[:10] * 3.0
    assert MemoryBank(1, unit=True).fit(train).distance(brighter).max() < 1e-3
    assert MemoryBank(1, unit=False).fit(train).distance(brighter).min() > 0.5


def test_bank_is_bounded_by_rows_and_values(monkeypatch):
    monkeypatch.setattr(memory, "BANK_MAX_ROWS", 64)
    bank = MemoryBank(5, unit=False).fit(np.random.default_rng(2).normal(size=(500, 4)), seed=3)
    assert bank.bank_.shape == (64, 4) and len(bank.kept_) == 64
    again = MemoryBank(5, unit=False).fit(np.random.default_rng(2).normal(size=(500, 4)), seed=3)
    np.testing.assert_array_equal(bank.kept_, again.kept_)
    assert MemoryBank(5, False, max_rows=32).fit(np.ones((500, 4))).bank_.shape == (32, 4)
    monkeypatch.setattr(memory, "BANK_BUDGET_VALUES", 40 * 8)
    wide = MemoryBank(5).fit(np.ones((500, 8)))
    assert wide.bank_.shape == (40, 8)


def test_save_and_load_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    bank = MemoryBank(3, unit=True).fit(rng.normal(size=(40, 6)))
    loaded = MemoryBank.load(bank.save(tmp_path / "bank.npz"))
    query = rng.normal(size=(9, 6))
    assert (loaded.k, loaded.unit) == (3, True)
    np.testing.assert_allclose(loaded.distance(query), bank.distance(query))


def test_corruptions_change_a_local_part_only():
    rng = np.random.default_rng(5)
    images = rng.uniform(size=(30, 16, 16, 1)).astype("float32")
    broken = corrupt(images, seed=0)
    changed = (broken != images).reshape(30, -1).mean(axis=1)
    assert np.all(changed <= 0.26) and np.mean(changed > 0) > 0.9
    rows = rng.normal(size=(30, 9)).astype("float32")
    swapped = (corrupt(rows, seed=0) != rows).sum(axis=1)
    assert swapped.max() <= 3 and np.mean(swapped > 0) > 0.9


def test_auroc_matches_scikit_learn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(6)
    normal, anomalous = rng.integers(0, 5, 40).astype(float), rng.integers(2, 8, 25).astype(float)
    expected = roc_auc_score(np.r_[np.zeros(40), np.ones(25)], np.r_[normal, anomalous])
    assert auroc(normal, anomalous) == pytest.approx(expected)
