"""Threshold calibration methods on data whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly.errors import AnomalyError
from anomaly.model.thresholds import fit_threshold, implied_rates, pot_threshold, quantile_threshold


def test_quantile_meets_the_target_fpr():
    scores = np.random.default_rng(0).normal(size=10_000)
    value = quantile_threshold(scores, 0.01)
    assert (scores > value).mean() <= 0.01
    assert (scores > value).mean() > 0.008


def test_pot_extrapolates_an_exponential_tail():
    rng = np.random.default_rng(1)
    scores = rng.exponential(size=20_000)
    value, tail = pot_threshold(scores, 1e-4)
    # exact (1 - 1e-4) quantile of Exp(1) is ln(1e4) = 9.21
    assert abs(value - np.log(1e4)) < 1.0
    assert abs(tail["xi"]) < 0.2


def test_pot_needs_enough_tail():
    with pytest.raises(AnomalyError, match="at least 10"):
        pot_threshold(np.arange(100.0), 0.001)


def test_f1_and_precision_at_recall():
    rng = np.random.default_rng(2)
    scores = np.r_[rng.normal(0, 1, 1000), rng.normal(4, 1, 100)]
    labels = np.r_[np.zeros(1000), np.ones(100)]
    f1 = fit_threshold("f1", scores, labels)
    assert 1.0 < f1.value < 4.0 and f1.implied["recall"] > 0.7
    at = fit_threshold("precision", scores, labels, at_recall=0.9)
    assert at.implied["recall"] >= 0.9
    # brute force: no threshold with recall >= 0.9 has a higher precision
    best = max(
        implied_rates(t, scores, labels)["precision"]
        for t in np.sort(scores)[:-1]
        if implied_rates(t, scores, labels)["recall"] >= 0.9
    )
    assert at.implied["precision"] == pytest.approx(best)


def test_label_free_methods_use_only_normal_rows():
    scores = np.r_[np.linspace(0, 1, 1000), np.full(50, 100.0)]
    labels = np.r_[np.zeros(1000), np.ones(50)]
    fit = fit_threshold("quantile", scores, labels, target_fpr=0.1)
    assert fit.value < 1.0
    assert fit.implied["recall"] == 1.0


def test_labelled_methods_need_labels():
    with pytest.raises(AnomalyError, match="needs labelled data"):
        fit_threshold("f1", np.arange(10.0))


def test_implied_rates_without_labels():
    assert implied_rates(0.5, np.array([0.1, 0.6, 0.7, 0.2]), None) == {"fpr": 0.5, "n": 4}
