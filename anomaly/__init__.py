"""GAN anomaly detection service: bundles, thresholds, batch scoring, streaming, reports."""

__version__ = "0.1.0"
