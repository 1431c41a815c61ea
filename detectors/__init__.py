"""GAN anomaly detectors in Keras 3 (GANomaly, AnoGAN with f-AnoGAN's izi_f encoder).

Arrays in, arrays out: this package knows nothing of files, Kafka or the CLI.

The detectors load lazily (PEP 562): ``detectors.base`` (the quantile rule, the score
normaliser) needs only NumPy, and the CLI's threshold refits import it without paying for
Keras; ``from detectors import GANomaly`` imports the networks on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DETECTORS", "AnoGAN", "Detector", "GANomaly", "ScoreComponents"]


def __getattr__(name: str) -> Any:
    if name in ("AnoGAN", "GANomaly", "DETECTORS"):
        from detectors.anogan import AnoGAN
        from detectors.ganomaly import GANomaly

        if name == "DETECTORS":
            return {"ganomaly": GANomaly, "anogan": AnoGAN}
        return AnoGAN if name == "AnoGAN" else GANomaly
    if name in ("Detector", "ScoreComponents"):
        from detectors import base

        return getattr(base, name)
    raise AttributeError(f"module 'detectors' has no attribute {name!r}")
