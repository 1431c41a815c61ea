"""Self-supervised rotation prediction for the discriminator (``keras.ops`` only).

SS-GAN (Chen et al. 2019) gives a GAN's discriminator a second task: say by how many quarter
turns a real image was rotated. GEOM (Golan and El-Yaniv 2018) and RotNet-based detectors
(Hendrycks et al. 2019) score an image by how badly a network trained on normal images
predicts the rotations of it: the network has learned what upright normal content looks like,
so content it has not seen (another object class, another view of the anatomy) is predicted
poorly. Here the GANomaly discriminator carries the rotation head, so the adversarial pair
is trained on it and the score comes from it.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

TURNS = 4


def rotate(x: Any, k: int) -> Any:
    """NHWC square images turned by ``k`` quarter turns (the same direction as ``np.rot90``
    over axes (1, 2))."""
    for _ in range(k % TURNS):
        x = ops.flip(ops.transpose(x, (0, 2, 1, 3)), axis=1)
    return x


def random_rotation(x: Any, seed: keras.random.SeedGenerator) -> tuple[Any, Any]:
    """(each image turned by a random 1-3 quarter turns, the number of turns as int32).

    Turn 0 is left out: the discriminator already sees every image upright in its real pass,
    whose rotation logits are trained towards 0 there.
    """
    n = ops.shape(x)[0]
    turns = keras.random.randint((n,), 1, TURNS, seed=seed)
    pick = ops.one_hot(turns, TURNS)[:, :, None, None, None]
    stacked = ops.stack([rotate(x, k) for k in range(TURNS)], axis=1)
    return ops.sum(pick * stacked, axis=1), turns


def rotation_loss(logits: Any, turns: Any) -> Any:
    """Mean cross-entropy of rotation logits (N x 4) against the turns made."""
    return ops.mean(ops.sparse_categorical_crossentropy(turns, logits, from_logits=True))


def rotation_nll(logits_by_turn: list[Any]) -> Any:
    """Per image, the mean over the four turns of -log p(turn | turned image): GEOM's score,
    higher when the network cannot tell how the image was turned."""
    terms = [
        -ops.take(ops.log_softmax(logits, axis=-1), k, axis=-1)
        for k, logits in enumerate(logits_by_turn)
    ]
    return ops.mean(ops.stack(terms, axis=-1), axis=-1)
