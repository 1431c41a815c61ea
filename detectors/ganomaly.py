"""GANomaly (Akcay et al. 2018): encoder -> decoder -> encoder, with a feature-matching critic.

One ``keras.Model`` trains generator and discriminator together through ``fit``: its
``compute_loss`` returns ``g_loss + d_loss``, where the generator loss sees the discriminator
through ``stateless_call`` with stop-gradient weights and the discriminator loss sees
``stop_gradient(x_hat)``. Each loss therefore only moves its own weights, and the same code
runs on the TensorFlow, JAX and PyTorch backends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from detectors import networks
from detectors.base import (
    GANDetector,
    ScoreComponents,
    input_complexity,
    iter_chunks,
    pad_to_bucket,
    predict_in_buckets,
)
from detectors.losses import bce_with_logits, call_frozen, per_sample_mean
from detectors.memory import KernelBoundary, MemoryBank, unit_rows
from detectors.rotation import TURNS, random_rotation, rotate, rotation_loss, rotation_nll
from detectors.supervision import fit_head
from detectors.synthetic import local_anomalies
from detectors.training import (
    StabilityMonitor,
    data_parallel,
    early_stopping,
    resolve_devices,
    set_mixed_precision,
    shardable,
    weight_devices,
)

# Default weights. Images: the memory-bank distances; the residuals rank simple images as
# normal (MNIST digit 1: reconstruction AUROC 0.03) and diluted the banks wherever averaged
# in. Records: the two banks, equal weights. The one-class boundary in the encoder's feature
# space and the residuals stay reported but do not vote (bench/tabular_recipes.py on the 22
# shared sets, seeds 0-2: banks alone 0.889 / AP 0.739 mean, with the boundary 0.879 / 0.730
# — it lifted cardio by 0.013 and cost glass 0.098, letter and optdigits 0.04; adding the
# reconstruction 0.886). The discriminator's anomaly map is
# trained (it shapes the discriminator's features, which the discriminator bank reads) and
# reported, but does not vote: seed 0, 10 epochs, it scored 0.51 on brain MRI and 0.33 on
# MNIST digit 9 (banks 0.72 / 0.68) and helped only on CIFAR-10 class 3 (0.64 vs 0.55).
# The discriminator's rotation head (ROTATION) is opt-in: a weight for it in
# ``score_weights`` builds and trains it. Voting at weight 1 beside the banks (a rule fixed
# before any run; bench/imaging.py, seed 0) it lifted the five judged CIFAR-10 classes from
# 0.718 to 0.729 mean (ship 0.800 -> 0.847, airplane 0.786 -> 0.761) but cost brain MRI
# 0.708 -> 0.673 and, in exploration, MNIST digit 2 0.978 -> 0.943.
IMAGE_WEIGHTS = {
    "encoder_knn": 1.0,
    "discriminator_knn": 1.0,
    "discriminator_map": 0.0,
    "reconstruction": 0.0,
    "latent": 0.0,
    "discriminator": 0.0,
}
RECORD_WEIGHTS = {
    "encoder_knn": 1.0,
    "discriminator_knn": 1.0,
    "label_head": 1.0,
    "encoder_svm": 0.0,
    "reconstruction": 0.0,
    "latent": 0.0,
    "discriminator": 0.0,
}
RESIDUALS = ("reconstruction", "latent", "discriminator")
BANKS = ("encoder_knn", "discriminator_knn")
# Records, opt-in (a weight for it in ``score_weights``): a bank of the scaled records
# themselves, no network — plain kNN beside the GAN's two views. Not in the default: on the
# 22 shared sets it lifted the banks by 0.004 mean ROC-AUC (bench/tabular_recipes.py), under
# the 0.005 set beforehand to be worth a third bank search per streamed record.
INPUT_BANK = "input_knn"
BOUNDARY = "encoder_svm"
# Records trained with labelled anomalies: the deviation head on the GAN's features
# (detectors.supervision); it votes beside the banks
LABEL_HEAD = "label_head"
# The discriminator's anomaly map (images): mean of its top TOP_CELLS_FRACTION cells
LOCAL_MAP = "discriminator_map"
TOP_CELLS_FRACTION = 0.1
# The discriminator's rotation head (images, opt-in): how badly it predicts the quarter turns
# of an image (``detectors.rotation``)
ROTATION = "discriminator_rotation"
# How image banks see an image: "invariant" (photometric + structural views, the default) or
# "raw" (both on the raw image, what bundles written before the views used)
BANK_VIEWS = ("invariant", "raw")
# Default training length. Images: the memory-bank features come from the first conv block,
# which settles early (MNIST, seed 0: encoder_knn AUROC within 0.01 after 5, 8 and 15
# epochs on digits 1 and 9), and an image epoch costs ~9 s on a 2-core CPU, so 10.
RECORD_EPOCHS = 15
IMAGE_EPOCHS = 10


def top_cells_mean(cells: np.ndarray) -> np.ndarray:
    """Per image, the mean of its TOP_CELLS_FRACTION most anomalous cells: a small defect
    lights a few cells, which a mean over the whole map would dilute."""
    flat = cells.reshape(len(cells), -1)
    k = max(1, int(round(flat.shape[1] * TOP_CELLS_FRACTION)))
    return np.sort(flat, axis=1)[:, -k:].mean(axis=1).astype(np.float32)


def has_local_map(discriminator: keras.Model) -> bool:
    """Whether the discriminator has the anomaly-map head (images, unless ``w_local`` is 0)."""
    return networks.has_layer(discriminator, networks.LOCAL_LOGITS.format(discriminator.name))


def has_rotation_head(discriminator: keras.Model) -> bool:
    """Whether the discriminator has the rotation head (images, opt-in)."""
    return networks.has_layer(discriminator, networks.ROTATION_LOGITS.format(discriminator.name))


class GANomalyNet(keras.Model):
    """The trainable GANomaly: generator (E, D, E2) and discriminator in one model."""

    def __init__(
        self,
        subnets: dict[str, keras.Model],
        build_discriminator: Any,
        w_adv: float,
        w_con: float,
        w_enc: float,
        w_local: float = 1.0,
        w_rotation: float = 1.0,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.encoder = subnets["encoder"]
        self.decoder = subnets["decoder"]
        self.encoder2 = subnets["encoder2"]
        self.discriminator = subnets["discriminator"]
        self.build_discriminator = build_discriminator
        self.w_adv, self.w_con, self.w_enc = float(w_adv), float(w_con), float(w_enc)
        self.g_tracker = keras.metrics.Mean(name="g_loss")
        self.d_tracker = keras.metrics.Mean(name="d_loss")
        self.adv_tracker = keras.metrics.Mean(name="adv")
        self.con_tracker = keras.metrics.Mean(name="con")
        self.enc_tracker = keras.metrics.Mean(name="enc")
        self.local_tracker = keras.metrics.Mean(name="local")
        self.rotation_tracker = keras.metrics.Mean(name="rotation")
        self.w_local = float(w_local)
        self.w_rotation = float(w_rotation)
        self.has_local = has_local_map(self.discriminator)
        self.has_rotation = has_rotation_head(self.discriminator)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x: Any, training: bool = False) -> tuple[Any, Any, Any]:
        z = self.encoder(x, training=training)
        x_hat = self.decoder(z, training=training)
        z_hat = self.encoder2(x_hat, training=training)
        return x_hat, z, z_hat

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        training: bool = True,
    ) -> Any:
        x_hat, z, z_hat = y_pred
        x = ops.cast(x, "float32")
        disc = self.discriminator
        feat_real = call_frozen(disc, x, training)[1]
        feat_fake = call_frozen(disc, x_hat, training)[1]
        adv = ops.mean(ops.square(ops.stop_gradient(feat_real) - feat_fake))
        con = ops.mean(ops.abs(x - x_hat))
        enc = ops.mean(ops.square(z - z_hat))
        g_loss = self.w_adv * adv + self.w_con * con + self.w_enc * enc

        real = disc(x, training=training)
        logit_fake = disc(ops.stop_gradient(x_hat), training=training)[0]
        d_loss = 0.5 * (bce_with_logits(1.0, real[0]) + bce_with_logits(0.0, logit_fake))
        local = self._local_loss(x, real[2], training) if self.has_local else 0.0
        rotation = self._rotation_loss(x, real[-1], training) if self.has_rotation else 0.0

        for tracker, value in (
            (self.g_tracker, g_loss),
            (self.d_tracker, d_loss),
            (self.adv_tracker, adv),
            (self.con_tracker, con),
            (self.enc_tracker, enc),
            (self.local_tracker, local),
            (self.rotation_tracker, rotation),
        ):
            tracker.update_state(value)
        return g_loss + d_loss + self.w_local * local + self.w_rotation * rotation

    def _local_loss(self, x: Any, local_real: Any, training: bool) -> Any:
        """The anomaly map's loss: every cell of a normal image says "normal"; on a copy with
        a synthetic anomaly each cell says how much of it the anomaly covers (DRAEM's
        discriminative objective, on the discriminator's own second block)."""
        x_bad, mask = local_anomalies(x, self.seed_generator)
        local_bad = self.discriminator(x_bad, training=training)[2]
        pool = x.shape[1] // local_bad.shape[1]
        covered = ops.average_pool(mask, pool, pool, padding="valid")
        bad = ops.binary_crossentropy(covered, local_bad, from_logits=True)
        return 0.5 * (ops.mean(bad) + bce_with_logits(0.0, local_real))

    def _rotation_loss(self, x: Any, upright_logits: Any, training: bool) -> Any:
        """SS-GAN's auxiliary task on real images: the upright batch (its logits from the
        real pass) says 0 turns, a copy turned by a random 1-3 quarter turns says how many."""
        turned, turns = random_rotation(x, self.seed_generator)
        turned_logits = self.discriminator(turned, training=training)[-1]
        upright = ops.zeros((ops.shape(x)[0],), "int32")
        return 0.5 * (rotation_loss(upright_logits, upright) + rotation_loss(turned_logits, turns))

    def reinitialise_discriminator(self) -> None:
        """Fresh random discriminator weights (the reference's answer to D collapse)."""
        networks.reinitialise(self.discriminator, self.build_discriminator)


class GANomaly(GANDetector):
    """GANomaly detector, dense (feature vectors) or convolutional (images, any H x W x C).

    Score components:
    - ``reconstruction`` = mean |x - x_hat|, ``latent`` = mean (z - z_hat)^2 (the paper's
      score), ``discriminator`` = mean squared distance of discriminator features;
    - ``encoder_knn`` / ``discriminator_knn``: mean distance to the ``knn_k`` nearest normal
      training records in the feature space of the trained encoder's first layer and of the
      discriminator's features (memory banks, the DN2 idea with the GAN's own networks as
      the backbone; see ``detectors.memory``);
    - records only, ``encoder_svm``: how far outside a one-class SVM boundary around the
      encoder bank's features a record falls (``detectors.memory.KernelBoundary``).
    - images, opt-in (a weight in ``score_weights``), ``discriminator_rotation``: how badly
      the discriminator's rotation head predicts the image's quarter turns (SS-GAN's
      auxiliary task, GEOM's score; ``detectors.rotation``);
    - records trained with labelled anomalies (``fit(X, y=...)``), ``label_head``: DevNet's
      deviation score on the features the banks read (``detectors.supervision``); it only
      raises a score (one-sided), so anomalies unlike the labelled ones keep the banks' say.

    ``score`` = weighted mean of the components, each robustly scaled by the median and IQR
    it has on the normal validation split; for images the three residuals are first
    corrected for input complexity. Default weights (``IMAGE_WEIGHTS`` / ``RECORD_WEIGHTS``):
    images and records, the two bank distances. Every
    component stays reported; ``score_weights`` changes the mix.
    """

    name = "ganomaly"
    subnet_names = ("encoder", "decoder", "encoder2", "discriminator")
    # records: ``fit(..., y=...)`` trains the label head on the labelled anomalies
    learns_from_labels = True
    score_formula = (
        "sum_i w_i * (c_i - median_i) / IQR_i / sum_i w_i; default weights: images "
        "encoder_knn 1, discriminator_knn 1; records the same, plus label_head 1 (its z "
        "clipped at 0) when trained with labelled anomalies; median and IQR fitted on the "
        "normal validation split, image residuals corrected for input complexity"
    )

    def __init__(
        self,
        variant: str = "auto",
        latent_dim: int | None = None,
        hidden: tuple[int, ...] = (64, 32),
        filters: int | None = None,
        w_adv: float = 1.0,
        w_con: float = 50.0,
        w_enc: float = 1.0,
        w_local: float = 1.0,
        w_rotation: float = 1.0,
        learning_rate: float = 2e-4,
        beta_1: float = 0.5,
        epochs: int | None = None,
        batch_size: int = 64,
        patience: int = 5,
        validation_fraction: float = 0.15,
        score_weights: dict[str, float] | None = None,
        knn_k: int = 5,
        bank_rows: int = 4096,
        bank_views: str = "invariant",
        d_collapse_threshold: float = 1e-5,
        mixed_precision: bool = False,
        seed: int | None = 0,
        verbose: int = 0,
        devices: int | str = 1,
    ) -> None:
        super().__init__()
        self.variant = variant
        self.latent_dim = latent_dim
        self.hidden = tuple(hidden)
        self.filters = filters
        self.devices = devices
        self.w_adv, self.w_con, self.w_enc = w_adv, w_con, w_enc
        self.w_local = w_local
        self.w_rotation = w_rotation
        self.learning_rate = learning_rate
        self.beta_1 = beta_1
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.validation_fraction = validation_fraction
        # None: the default for the input kind (IMAGE_WEIGHTS / RECORD_WEIGHTS), set by fit
        self.score_weights = dict(score_weights) if score_weights else None
        self.knn_k = knn_k
        self.bank_rows = bank_rows
        if bank_views not in BANK_VIEWS:
            raise ValueError(f"bank_views must be one of {BANK_VIEWS}, got {bank_views!r}")
        self.bank_views = bank_views
        self.d_collapse_threshold = d_collapse_threshold
        self.mixed_precision = mixed_precision
        self.seed = seed
        self.verbose = verbose
        self.latent_mean_: np.ndarray | None = None
        self.latent_std_: np.ndarray | None = None
        self._scorer: keras.Model | None = None
        self.memory_: dict[str, MemoryBank] = {}
        self.memory_rows_: dict[str, np.ndarray] = {}
        self.boundary_: KernelBoundary | None = None
        self.label_head_: keras.Model | None = None

    def component_weights(self) -> dict[str, float]:
        if self.score_weights is None:
            return dict(IMAGE_WEIGHTS if self.is_image else RECORD_WEIGHTS)
        return dict(self.score_weights)

    def _build_subnets(self) -> dict[str, keras.Model]:
        latent = self._resolved_latent_dim()
        shape = self._model_shape()
        if self.is_image:
            side, ch = shape[0], shape[2]
            return {
                "encoder": networks.conv_encoder(side, ch, latent, self.conv_filters(), "encoder"),
                "decoder": networks.conv_decoder(side, ch, latent, self.conv_filters(), "decoder"),
                "encoder2": networks.conv_encoder(
                    side, ch, latent, self.conv_filters(), "encoder2"
                ),
                "discriminator": self._build_discriminator(),
            }
        dim = shape[0]
        return {
            "encoder": networks.dense_encoder(dim, latent, self.hidden, "encoder"),
            "decoder": networks.dense_decoder(latent, dim, self.hidden, "decoder"),
            "encoder2": networks.dense_encoder(dim, latent, self.hidden, "encoder2"),
            "discriminator": self._build_discriminator(),
        }

    # --- training ---------------------------------------------------------------------------
    def _train(self, X_model: np.ndarray, val_model: np.ndarray, epochs: int | None) -> None:
        """Train generator and discriminator together; early stopping on the normal validation
        reconstruction loss restores the best weights. Then the latent statistics and the
        memory banks of the training data."""
        devices = resolve_devices(self.devices, self.batch_size)

        with data_parallel(devices):
            self.subnets_ = self._build_subnets()
            net = GANomalyNet(
                self.subnets_,
                self._build_discriminator,
                self.w_adv,
                self.w_con,
                self.w_enc,
                w_local=self.w_local,
                w_rotation=self.w_rotation,
                seed=self.seed,
            )
            net.compile(
                optimizer=keras.optimizers.Adam(self.learning_rate, beta_1=self.beta_1),
                jit_compile=self._jit_compile(),
            )
            val_fit = shardable(val_model, devices)
            monitor = StabilityMonitor(
                sample=shardable(val_model[:512], devices),
                # an eager call: a compiled predict function per network would be traced
                # once per fit, for a 512-row check per epoch
                generate=lambda s: ops.convert_to_numpy(
                    net.decoder(net.encoder(s, training=False), training=False)
                ),
                reinit_discriminator=net.reinitialise_discriminator,
                d_collapse_threshold=self.d_collapse_threshold,
            )
            net.fit(
                shardable(X_model, devices),
                validation_data=(val_fit,),
                epochs=self._epochs(epochs),
                batch_size=self.batch_size,
                shuffle=True,
                verbose=self.verbose,
                # early stopping first: it restores the best weights before the monitor's verdict
                callbacks=[early_stopping("val_con", self.patience), monitor],
            )
        set_mixed_precision(False)
        self.training_log_ = monitor.history
        if devices:
            self.training_log_.append(
                {"phase": "data_parallel", "devices": devices, "weights_on": weight_devices(net)}
            )
        self._scorer = None
        latents = predict_in_buckets(self.subnets_["encoder"], X_model)
        self.latent_mean_ = latents.mean(axis=0)
        self.latent_std_ = latents.std(axis=0) + 1e-6
        self._fit_memory(X_model)

    def _epochs(self, epochs: int | None) -> int:
        """The call's, else the constructor's, else the input kind's default; 0 trains nothing
        (the random-network ablation)."""
        for value in (epochs, self.epochs):
            if value is not None:
                return int(value)
        return IMAGE_EPOCHS if self.is_image else RECORD_EPOCHS

    def _build_discriminator(self) -> keras.Model:
        """Images get the anomaly-map head unless ``w_local`` is 0, and the rotation head when
        the score weights give it a weight (opt-in) and ``w_rotation`` is not 0."""
        shape = self._model_shape()
        if self.is_image:
            return networks.conv_discriminator(
                shape[0],
                shape[2],
                self.conv_filters(),
                local_head=self.w_local > 0,
                rotation_head=self.w_rotation > 0 and bool(self.component_weights().get(ROTATION)),
            )
        return super()._build_discriminator()

    def _jit_compile(self) -> str | bool:
        """XLA for everything except dense models on TensorFlow: compiling the small record
        networks costs more than it saves (cardio on a 2-core CPU, 3 interleaved fits each:
        4.8 s vs 5.1 s mean; the first epoch 2.2 s vs 2.8 s). JAX always compiles."""
        if not self.is_image and keras.backend.backend() == "tensorflow":
            return False
        return "auto"

    # --- scoring ------------------------------------------------------------------------------
    def _scoring_model(self) -> keras.Model:
        """One inference-mode graph: x_hat, the latent and feature errors, bank features."""
        if self._scorer is None:
            s = self.subnets_
            inputs = keras.Input(self._model_shape())
            z = s["encoder"](inputs)
            x_hat = s["decoder"](z)
            z_hat = s["encoder2"](x_hat)
            real = s["discriminator"](inputs)
            feat_fake = s["discriminator"](x_hat)[1]
            latent = ops.mean(ops.square(z - z_hat), axis=-1)
            disc = per_sample_mean(ops.square(real[1] - feat_fake))
            # bundles written before the anomaly map, the rotation head or the memory banks
            # score without them
            heads = [ops.sigmoid(real[2])] if self._has_local_map() else []
            if self._has_rotation_head():
                turned = [real[-1]] + [
                    s["discriminator"](rotate(inputs, k))[-1] for k in range(1, TURNS)
                ]
                heads.append(rotation_nll(turned))
            names = list(self.memory_)
            banks = self._bank_features(names)(inputs) if names else []
            by_name = dict(zip(names, banks, strict=True))
            head = []
            if self.label_head_ is not None:
                head = [self.label_head_([inputs, *(by_name[n] for n in BANKS)])]
            self._scorer = keras.Model(
                inputs, [x_hat, latent, disc, *heads, *banks, *head], name="ganomaly_scorer"
            )
        return self._scorer

    def _has_local_map(self) -> bool:
        return has_local_map(self.subnets_["discriminator"])

    def _has_rotation_head(self) -> bool:
        return has_rotation_head(self.subnets_["discriminator"])

    def _bank_names(self) -> tuple[str, ...]:
        """The memory banks a fit builds: the GAN's two views, and for records the input bank
        when ``score_weights`` gives it a weight."""
        if not self.is_image and self.component_weights().get(INPUT_BANK):
            return (*BANKS, INPUT_BANK)
        return BANKS

    def _bank_features(self, names: list[str] | tuple[str, ...]) -> keras.Model:
        """Input -> the features of the memory banks ``names``, in that order.

        Images (``bank_views="invariant"``, the default): two views of the first (finest)
        convolutional block, average-pooled to at most an 8 x 8 grid, neither of which sees
        an image's overall exposure: the encoder's on the image standardised to zero mean and
        unit variance (the layout of light and dark), the discriminator's with each kernel's
        mean removed (edges and texture only, blind to shading too). ``"raw"``: both blocks
        on the raw image (bundles written before the views). Deeper, coarser layers were
        measured to separate the shared data's anomalies worse. Records: the encoder's first
        hidden layer, the discriminator's feature-matching layer, and the scaled record itself.
        """
        s = self.subnets_
        encoder, disc = s["encoder"], s["discriminator"]
        inputs = keras.Input(self._model_shape())
        if self.is_image:
            side = self._model_shape()[0]
            pool = keras.layers.AveragePooling2D(max(1, (side // 2) // 8))
            enc_tap = keras.Model(encoder.inputs, encoder.get_layer("encoder_act0").output)
            if self.bank_views == "invariant":
                outs = {
                    "encoder_knn": pool(enc_tap(networks.InstanceStandardise()(inputs))),
                    "discriminator_knn": pool(
                        networks.CentredConvTap(disc.get_layer("discriminator_conv0"))(inputs)
                    ),
                }
            else:
                disc_tap = keras.Model(disc.inputs, disc.get_layer("discriminator_act0").output)
                outs = {
                    "encoder_knn": pool(enc_tap(inputs)),
                    "discriminator_knn": pool(disc_tap(inputs)),
                }
        else:
            tap = keras.Model(encoder.inputs, encoder.get_layer("encoder_act0").output)
            outs = {
                "encoder_knn": tap(inputs),
                "discriminator_knn": disc(inputs)[1],
                INPUT_BANK: keras.layers.Identity(name="input_bank")(inputs),
            }
        return keras.Model(inputs, [outs[n] for n in names], name="bank_features")

    def _features_in_chunks(
        self, x_model: np.ndarray, names: list[str] | tuple[str, ...]
    ) -> list[np.ndarray]:
        model = self._bank_features(names)
        parts = []
        for c in iter_chunks(len(x_model)):
            padded, n = pad_to_bucket(x_model[c])
            out = model.predict_on_batch(padded)
            parts.append([np.asarray(o, np.float32)[:n] for o in out])
        return [np.concatenate([p[i] for p in parts]) for i in range(len(names))]

    def _fit_label_head(self, X_model: np.ndarray, anomalies_model: np.ndarray) -> None:
        """The deviation head (``detectors.supervision``) on what the banks read — the record,
        the encoder's first layer, the discriminator's features — of the training rows and
        the labelled anomalies; the networks and banks stay as trained."""
        if self.is_image:
            raise ValueError("learning from labelled anomalies is for records, not images")
        normal = [X_model, *self._features_in_chunks(X_model, BANKS)]
        anomalies = [anomalies_model, *self._features_in_chunks(anomalies_model, BANKS)]
        self.label_head_ = fit_head(normal, anomalies, self.seed)
        self._scorer = None
        self.training_log_.append(
            {"phase": "label_head", "anomalies": len(anomalies_model), "normal_rows": len(X_model)}
        )

    def _fit_memory(self, x_model: np.ndarray) -> None:
        """Memory banks of the training data's features (images: cosine, records: Euclidean);
        records also get the one-class boundary, fitted on the encoder bank's rows."""
        self.memory_ = {}
        names = self._bank_names()
        for name, features in zip(names, self._features_in_chunks(x_model, names), strict=True):
            bank = MemoryBank(self.knn_k, self.is_image, self.bank_rows).fit(features, self.seed)
            self.memory_[name] = bank
        self.boundary_ = None
        if not self.is_image:
            self.memory_rows_ = {n: x_model[b.kept_] for n, b in self.memory_.items()}
            self.boundary_ = KernelBoundary().fit(self.memory_["encoder_knn"].bank_)
        self._scorer = None

    def _raw_components(self, x: np.ndarray) -> ScoreComponents:
        x_model = self._to_model(x)
        padded, n = pad_to_bucket(x_model)
        x_hat, latent, disc, *features = self._scoring_model().predict_on_batch(padded)
        head = features.pop() if self.label_head_ is not None else None
        x_hat = self._from_model(np.asarray(x_hat, dtype=np.float32)[:n])
        residual = np.abs(x - x_hat)
        extra, maps = {}, {"reconstruction": residual}
        if self._has_local_map():
            cells = np.asarray(features.pop(0), np.float32)[:n, ..., 0]
            extra[LOCAL_MAP] = top_cells_mean(cells)
            maps[LOCAL_MAP] = self._from_model(self._cells_to_pixels(cells, x.shape[-1]))
        rotation = None
        if self._has_rotation_head():
            rotation = np.asarray(features.pop(0), np.float32)[:n]
        bank_features = {}
        for name, feat in zip(self.memory_, features, strict=True):
            bank_features[name] = feat = np.asarray(feat, np.float32)[:n]
            dist, nearest = self.memory_[name].neighbours(feat)
            extra[name] = dist
            maps[name] = self._difference_map(name, feat, nearest, x)
        if self.boundary_ is not None and "encoder_knn" in bank_features:
            # the boundary's own map would be a kernel gradient; the nearest normal record's
            # differences point at the same features and read more plainly
            extra[BOUNDARY] = self.boundary_.distance(bank_features["encoder_knn"])
            maps[BOUNDARY] = maps["encoder_knn"]
        if head is not None:
            extra[LABEL_HEAD] = np.asarray(head, np.float32)[:n, 0]
            maps[LABEL_HEAD] = maps["encoder_knn"]
        if rotation is not None:
            # a whole-image judgement with no map of its own: its share of the heat goes
            # where the image differs from its nearest normal neighbour
            extra[ROTATION] = rotation
            maps[ROTATION] = maps["encoder_knn"]
        return ScoreComponents(
            score=np.zeros(n, np.float32),
            reconstruction=residual.reshape(n, -1).mean(axis=1),
            discriminator=np.asarray(disc, np.float32)[:n],
            latent=np.asarray(latent, np.float32)[:n],
            contributions=residual,
            reconstructed=x_hat,
            extra=extra,
            complexity=input_complexity(x) if self.is_image else None,
            maps=maps,
        )

    def _difference_map(
        self, name: str, feat: np.ndarray, nearest: np.ndarray, x: np.ndarray
    ) -> np.ndarray:
        """Where a record differs from its nearest normal neighbour, in input shape.

        Records: |x - nearest training record| per feature. Images: the squared difference
        of the (unit-normalised) feature maps per grid cell, spread back over the pixels.
        """
        bank = self.memory_[name]
        if not self.is_image:
            return np.abs(self._from_model(x) - self.memory_rows_[name][nearest])
        n, g, _, ch = feat.shape
        query = unit_rows(feat).reshape(n, g, g, ch)
        neighbour = bank.bank_[nearest].reshape(n, g, g, ch)
        cells = np.square(query - neighbour).sum(axis=-1)
        return self._from_model(self._cells_to_pixels(cells, x.shape[-1]))

    def _cells_to_pixels(self, cells: np.ndarray, channels: int) -> np.ndarray:
        """An N x g x g grid of cell values spread over the model-space pixels."""
        n, g = cells.shape[:2]
        side = self._model_shape()[0]
        pixels = np.repeat(np.repeat(cells, side // g, axis=1), side // g, axis=2)[..., None]
        return np.broadcast_to(pixels, (n, side, side, channels))

    def _explain(self, components: ScoreComponents) -> None:
        """Contributions = the score spread over the input: each weighted component's positive
        robust z, distributed in proportion to its own difference map (the residual
        |x - x_hat| for the residual components). A normal record gets an all-zero map; the
        mean of a map over its cells equals the positive part of the score."""
        maps = components.maps
        if not maps:
            return
        z = self.normaliser_.normalised(components.raw(), components.complexity)
        total = sum(self.normaliser_.weights.values()) or 1.0
        contributions = np.zeros_like(components.contributions, dtype=np.float32)
        axes = tuple(range(1, contributions.ndim))
        cells = int(np.prod(contributions.shape[1:]))
        for name, weight in self.normaliser_.weights.items():
            if not weight:
                continue
            heat = maps.get(name, maps["reconstruction"]).astype(np.float32)
            share = heat / np.maximum(heat.sum(axis=axes, keepdims=True), 1e-12)
            positive = np.maximum(z[name], 0.0).astype(np.float32)
            contributions += (
                (weight / total) * positive.reshape((-1,) + (1,) * len(axes)) * (share * cells)
            )
        components.contributions = contributions
        components.maps = {}

    def component_names(self) -> list[str]:
        boundary = [BOUNDARY] if self.boundary_ is not None else []
        local = [LOCAL_MAP] if self._has_local_map() else []
        rotation = [ROTATION] if self._has_rotation_head() else []
        head = [LABEL_HEAD] if self.label_head_ is not None else []
        return [
            "reconstruction",
            "discriminator",
            "latent",
            *local,
            *rotation,
            *self.memory_,
            *boundary,
            *head,
        ]

    def supervised_components(self) -> tuple[str, ...]:
        return (LABEL_HEAD,) if self.label_head_ is not None else ()

    def complexity_corrected(self) -> tuple[str, ...]:
        return RESIDUALS if self.is_image else ()

    def sample(self, n: int, seed: int | None = None) -> np.ndarray:
        """Synthetic normal records: decode codes drawn from the training data's latent Gaussian."""
        self._check_fitted()
        rng = np.random.default_rng(seed)
        z = rng.normal(self.latent_mean_, self.latent_std_, size=(n, len(self.latent_mean_)))
        decoded = predict_in_buckets(self.subnets_["decoder"], z.astype("float32"))
        return self._from_model(decoded.astype(np.float32))

    # --- persistence --------------------------------------------------------------------------
    def _save_extra(self, directory: Path) -> list[Path]:
        np.savez(directory / "latent.npz", mean=self.latent_mean_, std=self.latent_std_)
        files = [directory / "latent.npz"]
        for name, bank in self.memory_.items():
            files.append(bank.save(directory / f"memory_{name}.npz"))
            if not self.is_image:
                path = directory / f"memory_{name}_rows.npz"
                np.savez(path, rows=self.memory_rows_[name])
                files.append(path)
        if self.boundary_ is not None:
            files.append(self.boundary_.save(directory / f"{BOUNDARY}.npz"))
        if self.label_head_ is not None:
            self.label_head_.save(directory / f"{LABEL_HEAD}.keras")
            files.append(directory / f"{LABEL_HEAD}.keras")
        return files

    def _load_extra(self, directory: Path) -> None:
        with np.load(directory / "latent.npz", allow_pickle=False) as latent:
            self.latent_mean_, self.latent_std_ = latent["mean"], latent["std"]
        present = [n for n in (*BANKS, INPUT_BANK) if (directory / f"memory_{n}.npz").is_file()]
        self.memory_ = {n: MemoryBank.load(directory / f"memory_{n}.npz") for n in present}
        if not self.is_image:
            self.memory_rows_ = {}
            for name in present:
                with np.load(directory / f"memory_{name}_rows.npz", allow_pickle=False) as rows:
                    self.memory_rows_[name] = rows["rows"]
        boundary = directory / f"{BOUNDARY}.npz"
        self.boundary_ = KernelBoundary.load(boundary) if boundary.is_file() else None
        head = directory / f"{LABEL_HEAD}.keras"
        self.label_head_ = (
            keras.saving.load_model(head, safe_mode=True, compile=False) if head.is_file() else None
        )

    @classmethod
    def load(cls, directory: str | Path, state: dict[str, Any]) -> GANomaly:
        """A bundle written before ``bank_views`` existed holds banks of raw-image features."""
        params = {"bank_views": "raw", **state["params"]}
        return super().load(directory, {**state, "params": params})
