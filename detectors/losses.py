"""Loss pieces shared by the GAN detectors, in ``keras.ops`` only (any backend)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


def bce_with_logits(target: float, logits: Any) -> Any:
    """Mean binary cross-entropy of logits against a constant label (1 real, 0 fake)."""
    labels = ops.full_like(logits, target)
    return ops.mean(ops.binary_crossentropy(labels, logits, from_logits=True))


def per_sample_mean(x: Any) -> Any:
    """Mean over every axis but the batch axis."""
    return ops.mean(x, axis=tuple(range(1, len(x.shape))))


def call_frozen(model: keras.Model, inputs: Any, training: bool) -> Any:
    """``model(inputs)`` with stop-gradient weights: a loss through it moves only the inputs.

    This is how the generator's loss sees the discriminator inside one ``compute_loss``
    without training it (the Keras 2 ``trainable = False`` recipe does not work in Keras 3).
    """
    frozen = [ops.stop_gradient(v) for v in model.trainable_variables]
    state = [v.value for v in model.non_trainable_variables]
    outputs, _ = model.stateless_call(frozen, state, inputs, training=training)
    return outputs
