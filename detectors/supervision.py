"""Learning from a few labelled anomalies: a deviation head on the GAN's own features.

DevNet (Pang, Shen and van den Hengel, KDD 2019): a small network maps a record to a score,
trained with the deviation loss against a N(0, 1) prior: rows believed normal are pulled to
the prior's mean (|score|), labelled anomalies pushed at least ``MARGIN`` standard deviations
above it (max(0, MARGIN - score)). Each batch is half labelled anomalies, drawn with
replacement, so a handful of them is enough. ADBench (Han et al. 2022) found that a few
labelled anomalies lift detection more than any choice among unsupervised methods, and the
label-efficient deep methods (DevNet, Deep SAD) among those that use them best.

Here the head reads what the memory banks read — the record, the encoder's first layer and
the discriminator's features — with the GAN frozen: the adversarial networks are the
backbone, and the labels never move the networks or the banks, so a bundle trained with
labels keeps every unsupervised component exactly as it would be without them.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

# DevNet's settings (its paper, section 4): margin 5, one hidden layer of 20 units, L2 0.01,
# RMSprop 1e-3, 50 epochs of 20 batches of 512
MARGIN = 5.0
HIDDEN_UNITS = 20
L2 = 0.01
LEARNING_RATE = 1e-3
EPOCHS = 50
BATCHES_PER_EPOCH = 20
BATCH_SIZE = 512


def deviation_loss(y_true: Any, y_pred: Any) -> Any:
    """DevNet's loss with the prior N(0, 1): the deviation of a score is the score itself."""
    label = ops.cast(ops.reshape(y_true, (-1,)), "float32")
    dev = ops.reshape(ops.cast(y_pred, "float32"), (-1,))
    return ops.mean((1.0 - label) * ops.abs(dev) + label * ops.maximum(0.0, MARGIN - dev))


def build_head(widths: list[int], mean: np.ndarray, variance: np.ndarray, seed: int | None) -> Any:
    """Inputs (one per feature block) -> concatenated, standardised -> 20 ReLU -> score."""
    inputs = [keras.Input((w,), name=f"label_head_in{i}") for i, w in enumerate(widths)]
    x = keras.layers.Concatenate(name="label_head_concat")(inputs) if len(inputs) > 1 else inputs[0]
    x = keras.layers.Normalization(mean=mean, variance=variance, name="label_head_scale")(x)
    x = keras.layers.Dense(
        HIDDEN_UNITS,
        activation="relu",
        kernel_regularizer=keras.regularizers.L2(L2),
        kernel_initializer=keras.initializers.GlorotUniform(seed),
        name="label_head_hidden",
    )(x)
    out = keras.layers.Dense(
        1, kernel_initializer=keras.initializers.GlorotUniform(seed), name="label_head_score"
    )(x)
    return keras.Model(inputs, out, name="label_head")


class BalancedBatches(keras.utils.PyDataset):
    """Each batch: half labelled anomalies, half normal rows, both drawn with replacement."""

    def __init__(self, normal: list[np.ndarray], anomalies: list[np.ndarray], seed: int | None):
        super().__init__()
        self.normal, self.anomalies = normal, anomalies
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return BATCHES_PER_EPOCH

    def __getitem__(self, index: int) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        half = BATCH_SIZE // 2
        a = self.rng.integers(0, len(self.anomalies[0]), half)
        n = self.rng.integers(0, len(self.normal[0]), half)
        x = tuple(
            np.concatenate([bad[a], good[n]]).astype(np.float32)
            for bad, good in zip(self.anomalies, self.normal, strict=True)
        )
        y = np.concatenate([np.ones(half, np.float32), np.zeros(half, np.float32)])
        return x, y


def fit_head(
    normal: list[np.ndarray], anomalies: list[np.ndarray], seed: int | None = 0
) -> keras.Model:
    """Train the deviation head on feature blocks of normal rows and labelled anomalies (the
    same blocks, in the same order); the input scaling is fitted on the normal rows."""
    stacked = np.concatenate(normal, axis=1).astype(np.float64)
    mean, variance = stacked.mean(axis=0), np.maximum(stacked.var(axis=0), 1e-12)
    head = build_head([b.shape[1] for b in normal], mean, variance, seed)
    head.compile(optimizer=keras.optimizers.RMSprop(LEARNING_RATE), loss=deviation_loss)
    head.fit(BalancedBatches(normal, anomalies, seed), epochs=EPOCHS, verbose=0)
    return head
