"""Training helpers shared by the GAN detectors: seeding, the stability monitor, callbacks,
data-parallel training over several devices."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np

log = logging.getLogger("detectors.training")


def seed_everything(seed: int | None) -> None:
    """Seed Python, NumPy and the Keras backend so a run can be repeated."""
    if seed is not None:
        keras.utils.set_random_seed(int(seed))


def set_mixed_precision(enabled: bool) -> None:
    """Mixed float16 compute for GPUs (losses stay float32; slower on CPU, so opt-in)."""
    keras.mixed_precision.set_global_policy("mixed_float16" if enabled else "float32")


def validation_split(
    X: np.ndarray, fraction: float, seed: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of normal data into (train, validation)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(X))
    n_val = max(1, int(round(len(X) * fraction)))
    return X[order[n_val:]], X[order[:n_val]]


class StabilityMonitor(keras.callbacks.Callback):
    """Watches a GAN while it trains and says what goes wrong.

    - logs every epoch's losses (kept in ``history`` for the model manifest);
    - discriminator collapse: when the epoch's mean discriminator loss falls under
      ``d_collapse_threshold`` the discriminator is re-initialised, as the GANomaly reference
      implementation does (checked per epoch: on JAX the weights are only synced then);
    - generator mode collapse: when, at the end of training, the generator's outputs on a
      fixed sample vary far less than the data (variance ratio under
      ``mode_collapse_ratio``), it logs a warning. The ratio is logged every epoch, but
      judged once, on the weights training ends with: a generator that is still learning
      starts near a constant output (GANomaly's reconstructions of the fraud sample rise
      from a ratio of 0.016 in epoch 1 through 0.04 in epoch 4 to 0.33 in epoch 15), so
      the old per-epoch verdict flagged healthy runs; broken ones (learning rate 0,
      adversarial loss only, a 1-unit bottleneck) end at 0.02-0.05. ``warmup_epochs`` is
      accepted for existing configurations and ignored.
    """

    def __init__(
        self,
        sample: np.ndarray,
        generate: Callable[[np.ndarray], np.ndarray],
        reinit_discriminator: Callable[[], None] | None,
        d_collapse_threshold: float = 1e-5,
        mode_collapse_ratio: float = 0.05,
        warmup_epochs: int = 2,
    ) -> None:
        super().__init__()
        self.sample = sample
        self.generate = generate
        self.reinit_discriminator = reinit_discriminator
        self.d_collapse_threshold = d_collapse_threshold
        self.mode_collapse_ratio = mode_collapse_ratio
        self.warmup_epochs = warmup_epochs
        self.data_variance = float(np.mean(np.var(sample, axis=0))) or 1.0
        self.history: list[dict[str, Any]] = []

    def output_variance_ratio(self) -> float:
        generated = np.asarray(self.generate(self.sample))
        return float(np.mean(np.var(generated, axis=0))) / self.data_variance

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        ratio = self.output_variance_ratio()
        events = []
        if ratio < self.mode_collapse_ratio:
            events.append("generator_mode_collapse")
            log.warning(
                "generator output variance is %.3f of the data's at the end of training: "
                "mode collapse",
                ratio,
            )
        self.history.append(
            {"phase": "final_check", "output_variance_ratio": ratio, "events": events}
        )

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = {k: float(v) for k, v in (logs or {}).items()}
        ratio = self.output_variance_ratio()
        entry: dict[str, Any] = {"epoch": epoch + 1, **logs, "output_variance_ratio": ratio}
        events = []
        d_loss = logs.get("d_loss")
        if (
            d_loss is not None
            and self.reinit_discriminator is not None
            and d_loss < self.d_collapse_threshold
        ):
            self.reinit_discriminator()
            events.append("discriminator_collapse_reinitialised")
            log.warning(
                "epoch %d: discriminator loss %.2e < %.0e, discriminator re-initialised",
                epoch + 1,
                d_loss,
                self.d_collapse_threshold,
            )
        if not np.all(np.isfinite(list(logs.values()))):
            events.append("non_finite_loss")
            log.warning("epoch %d: non-finite loss %s", epoch + 1, logs)
            self.model.stop_training = True
        entry["events"] = events
        self.history.append(entry)
        log.info(
            "epoch %d %s",
            epoch + 1,
            " ".join(f"{k}={v:.4g}" for k, v in entry.items() if isinstance(v, float)),
        )


def early_stopping(monitor: str, patience: int) -> keras.callbacks.EarlyStopping:
    """Label-free model selection: stop on the normal validation split's loss, keep the best."""
    return keras.callbacks.EarlyStopping(
        monitor=monitor, mode="min", patience=patience, restore_best_weights=True
    )


def resolve_devices(devices: int | str | None, batch_size: int) -> list[str]:
    """The devices a fit runs on: ``1`` / ``None`` one device, ``N`` the first N, ``"all"``.

    Data-parallel training uses Keras 3's ``keras.distribution.DataParallel``, which only the
    JAX backend implements (Keras 3.15's TensorFlow distribution module is a prototype marked
    "do not use"), so more than one device on another backend is refused with what to do.
    Every batch is split evenly over the devices, so the batch size must be a multiple of
    their number.
    """
    if devices in (None, 1, "1"):
        return []
    backend = keras.backend.backend()
    if str(devices).lower() == "all":
        try:
            found = keras.distribution.list_devices()
        except (NotImplementedError, ValueError, RuntimeError):
            found = []
        if len(found) <= 1 and backend != "jax":
            return []
    else:
        try:
            count = int(devices)
        except (TypeError, ValueError):
            raise ValueError(
                f"devices must be a positive number or 'all', not {devices!r}"
            ) from None
        if count < 1:
            raise ValueError(f"devices must be a positive number or 'all', not {devices!r}")
        if count == 1:
            return []
        if backend != "jax":
            raise ValueError(
                f"training on {count} devices needs the JAX backend (Keras 3 data parallelism "
                f"is JAX-only; this run uses {backend}): add --backend jax"
            )
        found = keras.distribution.list_devices()
        if count > len(found):
            raise ValueError(f"asked for {count} devices, {len(found)} found ({', '.join(found)})")
        found = found[:count]
    if len(found) > 1 and batch_size % len(found):
        raise ValueError(
            f"batch size {batch_size} does not split evenly over {len(found)} devices: "
            f"use a multiple of {len(found)}"
        )
    return found if len(found) > 1 else []


@contextlib.contextmanager
def data_parallel(devices: list[str]) -> Iterator[None]:
    """Build and fit inside this block to replicate the weights on ``devices`` and split
    every batch over them (one device: a plain fit).

    Under JAX the sharded step computes the same global-batch loss as one device, so the
    weights differ only by the order of floating-point sums. The weights stay replicated
    after the block; scoring outside it runs as usual.
    """
    if len(devices) < 2:
        yield
        return
    with keras.distribution.DataParallel(devices=devices).scope():
        yield


def shardable(x: np.ndarray, devices: list[str]) -> np.ndarray:
    """``x`` without its last ``len(x) % len(devices)`` rows, so every batch (the last,
    partial one included, given a batch size that is a multiple of the device count)
    splits evenly; drops at most ``len(devices) - 1`` rows."""
    if len(devices) < 2:
        return x
    return x[: len(x) - len(x) % len(devices)]


def weight_devices(model: keras.Model) -> int:
    """On how many devices the model's weights live (recorded in the training log so a
    multi-device run shows it really was one)."""
    value = model.weights[0].value
    sharding = getattr(value, "sharding", None)
    return len(sharding.device_set) if sharding is not None else 1
