"""Operating a deployed model: refit thresholds from the scores it published, drift checks."""
