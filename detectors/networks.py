"""Small builder functions for the GAN sub-networks (keras-io style, functional models).

Dense variants serve feature vectors; DCGAN-style convolutional variants serve images whose
side is a power of two >= 16 (the detectors pad other sizes up to one).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import keras
from keras import layers, ops

from detectors.rotation import TURNS

# The names of the discriminator's optional heads' output layers (which saved networks have one)
LOCAL_LOGITS = "{}_local_logit"
ROTATION_LOGITS = "{}_rotation_logits"


def _dense_stack(x: keras.KerasTensor, units: tuple[int, ...], name: str) -> keras.KerasTensor:
    for i, n in enumerate(units):
        x = layers.Dense(n, name=f"{name}_dense{i}")(x)
        x = layers.LeakyReLU(0.2, name=f"{name}_act{i}")(x)
    return x


def dense_encoder(
    input_dim: int, latent_dim: int, hidden: tuple[int, ...], name: str = "encoder"
) -> keras.Model:
    """Feature vector -> latent code."""
    inputs = keras.Input((input_dim,), name=f"{name}_input")
    x = _dense_stack(inputs, hidden, name)
    z = layers.Dense(latent_dim, name=f"{name}_latent", dtype="float32")(x)
    return keras.Model(inputs, z, name=name)


def dense_decoder(
    latent_dim: int, output_dim: int, hidden: tuple[int, ...], name: str = "decoder"
) -> keras.Model:
    """Latent code -> feature vector (linear output: inputs are standardised, not bounded)."""
    inputs = keras.Input((latent_dim,), name=f"{name}_input")
    x = _dense_stack(inputs, tuple(reversed(hidden)), name)
    out = layers.Dense(output_dim, name=f"{name}_output", dtype="float32")(x)
    return keras.Model(inputs, out, name=name)


def dense_discriminator(
    input_dim: int, hidden: tuple[int, ...], name: str = "discriminator"
) -> keras.Model:
    """Feature vector -> (real/fake logit, feature layer used for feature matching)."""
    inputs = keras.Input((input_dim,), name=f"{name}_input")
    features = _dense_stack(inputs, hidden, name)
    features = layers.Activation("linear", dtype="float32", name=f"{name}_features")(features)
    logit = layers.Dense(1, name=f"{name}_logit", dtype="float32")(features)
    return keras.Model(inputs, [logit, features], name=name)


def _n_downsamples(side: int) -> int:
    if side < 16 or side & (side - 1):
        raise ValueError(f"convolutional networks need a power-of-two side >= 16, got {side}")
    return int(math.log2(side)) - 2


def _conv_down(
    x: keras.KerasTensor,
    side: int,
    filters: int,
    name: str,
    blocks: list[keras.KerasTensor] | None = None,
) -> keras.KerasTensor:
    """Strided 4x4 convolutions (BatchNorm after the first, LeakyReLU) from side to 4x4;
    each block's output is appended to ``blocks`` when given."""
    for i in range(_n_downsamples(side)):
        x = layers.Conv2D(
            filters * 2**i, 4, strides=2, padding="same", use_bias=False, name=f"{name}_conv{i}"
        )(x)
        if i > 0:
            x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.LeakyReLU(0.2, name=f"{name}_act{i}")(x)
        if blocks is not None:
            blocks.append(x)
    return x


def conv_encoder(
    side: int, channels: int, latent_dim: int, filters: int, name: str = "encoder"
) -> keras.Model:
    """DCGAN encoder: strided 4x4 convolutions down to 4x4, then a 4x4 'valid' conv to z."""
    inputs = keras.Input((side, side, channels), name=f"{name}_input")
    x = _conv_down(inputs, side, filters, name)
    x = layers.Conv2D(latent_dim, 4, padding="valid", use_bias=False, name=f"{name}_to_latent")(x)
    z = layers.Flatten(name=f"{name}_flatten", dtype="float32")(x)
    return keras.Model(inputs, z, name=name)


def conv_decoder(
    side: int, channels: int, latent_dim: int, filters: int, name: str = "decoder"
) -> keras.Model:
    """DCGAN generator: z -> 4x4 -> transposed strided convs up to side x side, sigmoid out."""
    n = _n_downsamples(side)
    inputs = keras.Input((latent_dim,), name=f"{name}_input")
    x = layers.Reshape((1, 1, latent_dim), name=f"{name}_reshape")(inputs)
    x = layers.Conv2DTranspose(
        filters * 2 ** (n - 1), 4, padding="valid", use_bias=False, name=f"{name}_from_latent"
    )(x)
    x = layers.BatchNormalization(name=f"{name}_bn_in")(x)
    x = layers.ReLU(name=f"{name}_act_in")(x)
    for i in reversed(range(1, n)):
        x = layers.Conv2DTranspose(
            filters * 2 ** (i - 1),
            4,
            strides=2,
            padding="same",
            use_bias=False,
            name=f"{name}_deconv{i}",
        )(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.ReLU(name=f"{name}_act{i}")(x)
    x = layers.Conv2DTranspose(channels, 4, strides=2, padding="same", name=f"{name}_to_image")(x)
    out = layers.Activation("sigmoid", dtype="float32", name=f"{name}_output")(x)
    return keras.Model(inputs, out, name=name)


def conv_discriminator(
    side: int,
    channels: int,
    filters: int,
    name: str = "discriminator",
    local_head: bool = False,
    rotation_head: bool = False,
) -> keras.Model:
    """DCGAN discriminator: image -> (logit, last 4x4 feature map for feature matching).

    ``local_head``: one more output, one logit per cell of the second block's grid (side / 4)
    that says whether that cell holds a synthetic anomaly (GANomaly's anomaly map, trained
    on ``synthetic.local_anomalies``). ``rotation_head``: one more (last) output, four
    logits read from the 4x4 feature map that say by how many quarter turns the image was
    rotated (``detectors.rotation``).
    """
    inputs = keras.Input((side, side, channels), name=f"{name}_input")
    blocks: list[keras.KerasTensor] = []
    x = _conv_down(inputs, side, filters, name, blocks)
    features = layers.Activation("linear", dtype="float32", name=f"{name}_features")(x)
    x = layers.Conv2D(1, 4, padding="valid", name=f"{name}_to_logit")(features)
    logit = layers.Flatten(name=f"{name}_logit", dtype="float32")(x)
    outputs = [logit, features]
    if local_head:
        local = layers.Conv2D(filters, 3, padding="same", name=f"{name}_local_conv")(blocks[1])
        local = layers.LeakyReLU(0.2, name=f"{name}_local_act")(local)
        outputs.append(layers.Conv2D(1, 1, name=LOCAL_LOGITS.format(name), dtype="float32")(local))
    if rotation_head:
        flat = layers.Flatten(name=f"{name}_rotation_flatten")(features)
        outputs.append(
            layers.Dense(TURNS, name=ROTATION_LOGITS.format(name), dtype="float32")(flat)
        )
    return keras.Model(inputs, outputs, name=name)


def has_layer(model: keras.Model, layer_name: str) -> bool:
    """Whether ``model`` has a layer of that name (which optional heads a saved network has)."""
    return any(layer.name == layer_name for layer in model.layers)


def padded_side(height: int, width: int) -> int:
    """The power-of-two square side (>= 16) an image of this size is padded to."""
    return max(16, 1 << (max(height, width) - 1).bit_length())


def reinitialise(model: keras.Model, build: Callable[[], keras.Model]) -> None:
    """Give ``model`` the fresh random weights of a newly built twin (same architecture)."""
    fresh = build()
    for var, value in zip(model.weights, fresh.weights, strict=True):
        var.assign(value)


@keras.saving.register_keras_serializable(package="detectors")
class InstanceStandardise(layers.Layer):
    """Each image to zero mean and unit variance over its pixels and channels.

    The photometric view of the memory banks: scans from different sites differ in exposure
    and contrast, which a raw-pixel feature reads as difference; standardising each image
    first keeps its layout of light and dark and drops its overall level and spread.
    """

    def call(self, x: keras.KerasTensor) -> keras.KerasTensor:
        axes = tuple(range(1, len(x.shape)))
        mean = ops.mean(x, axis=axes, keepdims=True)
        std = ops.std(x, axis=axes, keepdims=True)
        return (x - mean) / (std + 1e-6)


class CentredConvTap(layers.Layer):
    """A trained first convolution with the mean of each kernel removed, then LeakyReLU.

    The structural view of the memory banks: a zero-sum kernel does not respond to the local
    brightness level, only to edges and texture, so a cosine distance over its responses
    ignores exposure, contrast and slow shading alike. It reads the source layer's live
    kernel, so it needs no weights of its own (and is built fresh for scoring, not saved).
    """

    def __init__(self, source: layers.Conv2D, slope: float = 0.2, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.slope = float(slope)

    def call(self, x: keras.KerasTensor) -> keras.KerasTensor:
        kernel = self.source.kernel
        kernel = kernel - ops.mean(kernel, axis=(0, 1, 2), keepdims=True)
        y = ops.conv(x, kernel, strides=self.source.strides, padding=self.source.padding)
        return ops.leaky_relu(y, self.slope)
