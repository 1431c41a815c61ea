"""The anomaly decision: a record is anomalous when its score exceeds the live threshold.

Every path that flags records (the stream's alerts and score messages, file and Spark
scoring, the imaging report, evaluation, threshold refits) calls :func:`exceeds` (or
``Bundle.decide``, which passes the bundle's live threshold), so they cannot disagree.
The comparison is made in float64: a float32 score compared with a threshold fitted in
float64 (the labelled methods sit one float64 step below a score) would otherwise round
the threshold onto the score and miss it. A non-finite score is never anomalous here; the
stream dead-letters it instead.
"""

from __future__ import annotations

import numpy as np


def exceeds(scores: np.ndarray | float, threshold: float) -> np.ndarray:
    """One flag per score: whether it exceeds ``threshold`` (in float64; NaN never does)."""
    return np.asarray(scores, dtype=np.float64) > np.float64(threshold)
