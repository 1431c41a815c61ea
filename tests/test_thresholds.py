"""Threshold calibration methods on data whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly.bundle.thresholds import (
    fit_threshold,
    history_table,
    implied_rates,
    pot_threshold,
    propose_change,
    quantile_threshold,
)
from anomaly.errors import AnomalyError


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
    implied = implied_rates(0.5, np.array([0.1, 0.6, 0.7, 0.2]), None)
    assert implied == {"alert_rate": 0.5, "fpr": 0.5, "n": 4}


def _mixed_scores():
    rng = np.random.default_rng(3)
    scores = np.r_[rng.exponential(1.0, 9000), rng.normal(12.0, 1.0, 900)]
    labels = np.r_[np.zeros(9000), np.ones(900)]
    return scores, labels


def test_guard_refuses_labels_off_on_data_with_anomalies():
    # the README trap: POT with labels switched off fits the anomalies' tail, not the normals'
    scores, labels = _mixed_scores()
    live = quantile_threshold(scores[labels == 0], 0.01)
    blind = propose_change(live, 1, "pot", scores, None, target_fpr=0.0005)
    assert blind.after["alert_rate"] < blind.before["alert_rate"] / 10
    reason = blind.refusal(3.0, 1e-4)
    assert reason and "would fall" in reason and "--force" in reason
    labelled = propose_change(live, 1, "pot", scores, labels, target_fpr=0.005)
    assert labelled.refusal(3.0, 1e-4) is None
    assert labelled.after["recall"] > 0.99 and "recall" in labelled.table()


def test_guard_refuses_a_rise_and_a_rate_below_the_floor():
    scores, labels = _mixed_scores()
    live = quantile_threshold(scores[labels == 0], 0.01)
    loose = propose_change(live, 2, "quantile", scores, labels, target_fpr=0.5)
    assert "would rise" in loose.refusal(3.0, 1e-4)
    assert loose.refusal(100.0, 1e-4) is None
    strict = propose_change(live, 2, "quantile", scores[:9000], None, target_fpr=0.0002)
    assert "below --min-alert-rate" in strict.refusal(1e6, 0.001)
    with pytest.raises(AnomalyError, match="above 1"):
        strict.refusal(0.5, 0.0)


def test_history_table_marks_the_live_entry():
    history = [
        {
            "version": 1,
            "value": 4.0,
            "method": "quantile",
            "params": {"target_fpr": 0.01},
            "implied": {"fpr": 0.01},
            "timestamp": "t1",
            "note": "initial",
        },
        {
            "version": 2,
            "value": 9.5,
            "method": "rollback",
            "params": {"to_version": 1},
            "implied": {"alert_rate": 0.02},
            "timestamp": "t2",
            "source": "topic scores",
        },
    ]
    lines = history_table(history).splitlines()
    assert len(lines) == 3 and lines[0].startswith("version")
    assert "v1" in lines[1] and "initial" in lines[1] and "(live)" not in lines[1]
    assert "9.5" in lines[2] and "to_version=1; topic scores" in lines[2]
    assert lines[2].endswith("(live)") and "2.0000%" in lines[2]
