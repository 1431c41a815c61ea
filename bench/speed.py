"""Training and scoring speed of the detectors on the current Keras backend.

Measures, in one run: ms per training step (dense GANomaly on 30 features at batch 256; conv
GANomaly on 32x32x1 at batch 64), and scoring throughput (records/s) through
``score_components`` at several batch sizes, for GANomaly, AnoGAN's izi_f encoder mode and
AnoGAN's batched latent search (100 steps). Absolute figures belong to the GPU machine; on
the shared CPU only ratios within one run are meaningful.

    KERAS_BACKEND=jax python bench/speed.py --out bench/out/speed-jax.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class EpochTimer:
    """A Keras callback timing whole epochs after the first (which pays for compilation).

    Epoch boundaries synchronise with the device (the logs are read back), so asynchronous
    dispatch on JAX cannot flatter the figure the way per-batch timestamps would.
    """

    def __new__(cls):
        import keras

        class _Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.seconds, self._t = [], 0.0

            def on_epoch_begin(self, epoch, logs=None):
                self._t = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                if epoch > 0:
                    self.seconds.append(time.perf_counter() - self._t)

        return _Timer()


def train_step_ms(det, X, epochs: int) -> tuple[float, object]:
    """Ms per step (median over epochs 2..n) of a plain fit of the detector's own network."""
    import keras

    from detectors.ganomaly import GANomalyNet

    det.input_shape_ = tuple(X.shape[1:])
    det.subnets_ = det._build_subnets()
    net = GANomalyNet(det.subnets_, det._build_discriminator, 1.0, 50.0, 1.0)
    net.compile(optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5), jit_compile="auto")
    timer = EpochTimer()
    Xm = det._to_model(X)
    net.fit(Xm, epochs=epochs, batch_size=det.batch_size, verbose=0, callbacks=[timer])
    steps = int(np.ceil(len(Xm) / det.batch_size))
    return float(np.median(timer.seconds) / steps * 1000), net


def throughput(score, X, batch: int, repeats: int) -> float:
    score(X[:batch])  # compile this bucket
    n = 0
    started = time.perf_counter()
    while time.perf_counter() - started < 1.0 or n < repeats * batch:
        score(X[:batch])
        n += batch
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "speed.json")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    import keras

    from detectors import AnoGAN, GANomaly

    rng = np.random.default_rng(0)
    results: dict[str, object] = {"backend": keras.backend.backend()}
    try:
        import jax

        results["device"] = str(jax.devices()[0])
    except Exception:
        results["device"] = "cpu"

    X = rng.normal(size=(16384, 30)).astype("float32")
    dense = GANomaly(batch_size=256, hidden=(64, 32))
    results["train_ms_per_step_dense_b256"], _ = train_step_ms(dense, X, args.epochs)
    images = rng.uniform(size=(4096, 32, 32, 1)).astype("float32")
    conv = GANomaly(batch_size=64, filters=32, latent_dim=100)
    results["train_ms_per_step_conv32_b64"], _ = train_step_ms(conv, images, args.epochs)

    fitted = GANomaly(epochs=2, batch_size=256, seed=0).fit(X[:4096])
    enc = AnoGAN(epochs=1, batch_size=256, mode="encoder", seed=0).fit(X[:4096])
    search = AnoGAN(epochs=1, batch_size=256, mode="search", search_steps=100, seed=0)
    search.fit(X[:4096])
    big = np.tile(X, (2, 1))
    for name, det, batches in (
        ("ganomaly", fitted, (1, 64, 512, 4096, 32768)),
        ("anogan_encoder", enc, (1, 512, 4096, 32768)),
        ("anogan_search100", search, (512, 4096)),
    ):
        for b in batches:
            rate = throughput(det.score_components, big, b, repeats=2)
            results[f"score_rec_per_s_{name}_b{b}"] = round(rate, 1)
            print(name, b, round(rate), flush=True)
    conv_fit = GANomaly(epochs=1, batch_size=64, filters=32, latent_dim=100, seed=0)
    conv_fit.fit(images[:1024])
    for b in (64, 512):
        results[f"score_img_per_s_conv32_b{b}"] = round(
            throughput(conv_fit.score_components, images, b, repeats=2), 1
        )
    print(json.dumps(results, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
