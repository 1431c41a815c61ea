"""Synthetic local anomalies for training the discriminator's anomaly map (``keras.ops`` only).

DRAEM (Zavrtanik et al. 2021) trains a discriminative network to segment synthetic anomalies
pasted into normal images and needs no pretrained backbone; its ablation shows that masks
filled with random colour already carry most of the gain. Here a mask - a rectangle or a
smooth blob (upsampled coarse noise, thresholded: a cheap Perlin-like shape) - is filled
with a random flat colour or with uniform noise and blended in at a random opacity.

Patches cut from *other normal images* are left out on purpose: that corruption is what the
label-free self-check (``detectors.selfcheck``) uses, so it stays a family the map has never
been trained on.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

# Rectangle sides and blob coverage as fractions of the image side, and the blend opacity.
MIN_SIDE, MAX_SIDE = 0.08, 0.45
MIN_OPACITY = 0.4
BLOB_GRID = 4


def local_anomalies(x: Any, seed: keras.random.SeedGenerator) -> tuple[Any, Any]:
    """(corrupted copy of ``x``, mask) for a batch of NHWC images in [0, 1]; mask is N x H x
    W x 1 in [0, 1], the opacity each pixel was overwritten with."""
    shape = ops.shape(x)
    n, h, w, c = shape[0], x.shape[1], x.shape[2], x.shape[3]
    r = keras.random.uniform((n, 6), seed=seed)

    # a rectangle per image
    size_h = (MIN_SIDE + (MAX_SIDE - MIN_SIDE) * r[:, 0]) * h
    size_w = (MIN_SIDE + (MAX_SIDE - MIN_SIDE) * r[:, 1]) * w
    centre_y, centre_x = r[:, 2] * h, r[:, 3] * w
    yy = ops.reshape(ops.arange(h, dtype="float32"), (1, h, 1))
    xx = ops.reshape(ops.arange(w, dtype="float32"), (1, 1, w))
    inside_y = ops.abs(yy - centre_y[:, None, None]) < size_h[:, None, None] / 2
    inside_x = ops.abs(xx - centre_x[:, None, None]) < size_w[:, None, None] / 2
    rect = ops.cast(ops.logical_and(inside_y, inside_x), "float32")[..., None]

    # a smooth blob per image: coarse noise, upsampled, above a per-image cut that keeps
    # roughly MIN_SIDE^2 .. MAX_SIDE^2 of the image
    coarse = keras.random.uniform((n, BLOB_GRID, BLOB_GRID, 1), seed=seed)
    smooth = ops.image.resize(coarse, (h, w), interpolation="bilinear")
    cut = 1.0 - (MIN_SIDE**2 + (MAX_SIDE**2 - MIN_SIDE**2) * r[:, 1])
    blob = ops.cast(
        smooth > cut[:, None, None, None] * ops.max(smooth, axis=(1, 2, 3))[:, None, None, None],
        "float32",
    )

    use_rect = ops.cast(r[:, 4] < 0.5, "float32")[:, None, None, None]
    opacity = (MIN_OPACITY + (1.0 - MIN_OPACITY) * r[:, 5])[:, None, None, None]
    mask = (use_rect * rect + (1.0 - use_rect) * blob) * opacity

    colour = keras.random.uniform((n, 1, 1, c), seed=seed)
    noise = keras.random.uniform((n, h, w, c), seed=seed)
    flat = ops.cast(keras.random.uniform((n, 1, 1, 1), seed=seed) < 0.5, "float32")
    fill = flat * colour + (1.0 - flat) * noise
    return x * (1.0 - mask) + fill * mask, mask
