"""The one anomaly decision (``anomaly.bundle.decision.exceeds``)."""

from __future__ import annotations

import numpy as np

from anomaly.bundle.decision import exceeds


def test_a_float32_score_one_step_above_a_float64_threshold_is_an_anomaly():
    score = np.float32(1.5)
    # the labelled refit methods put the threshold one float64 step below a score
    threshold = float(np.nextafter(np.float64(score), -np.inf))
    assert exceeds(np.array([score], dtype=np.float32), threshold).tolist() == [True]
    # compared in float32 the threshold rounds onto the score and the record is missed
    assert not (np.array([score], dtype=np.float32) > np.float32(threshold)).any()


def test_equal_and_non_finite_scores_are_not_anomalies():
    flags = exceeds(np.array([2.0, 2.0 + 1e-9, np.nan, np.inf, -np.inf]), 2.0)
    assert flags.tolist() == [False, True, False, True, False]
    assert bool(exceeds(3.0, 2.0)) is True
