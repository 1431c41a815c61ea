"""GAN anomaly detectors in Keras 3 (GANomaly, AnoGAN with f-AnoGAN's izi_f encoder).

Arrays in, arrays out: this package knows nothing of files, Kafka or the CLI.
"""

from detectors.anogan import AnoGAN
from detectors.base import Detector, ScoreComponents
from detectors.ganomaly import GANomaly

DETECTORS = {"ganomaly": GANomaly, "anogan": AnoGAN}

__all__ = ["DETECTORS", "AnoGAN", "Detector", "GANomaly", "ScoreComponents"]
