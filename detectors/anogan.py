"""AnoGAN (Schlegl et al. 2017) with f-AnoGAN's izi_f encoder (Schlegl et al. 2019).

Training: a GAN (G: z -> x, D: x -> (logit, features)), then an encoder E trained with G and
D frozen so that G(E(x)) reconstructs x in image and feature space (izi_f).
Scoring: A(x) = (1 - lambda) * R(x) + lambda * D(x), with R = mean |x - G(z*)| and
D = mean |f(x) - f(G(z*))|. z* comes from
  - ``mode="search"``: the paper's latent search, one vectorised Adam optimisation over the
    whole batch's z (warm-started at E(x)), never one record at a time;
  - ``mode="encoder"``: f-AnoGAN's fast mode, z* = E(x), one forward pass.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from detectors import networks
from detectors.base import (
    GANDetector,
    ScoreComponents,
    ScoreNormaliser,
    iter_chunks,
    pad_to_bucket,
    predict_in_buckets,
)
from detectors.losses import bce_with_logits, call_frozen, per_sample_mean
from detectors.training import (
    StabilityMonitor,
    data_parallel,
    early_stopping,
    resolve_devices,
    set_mixed_precision,
    shardable,
    weight_devices,
)


class AnoGANNet(keras.Model):
    """The GAN phase: non-saturating G loss plus feature matching, both through one ``fit``."""

    def __init__(
        self,
        generator: keras.Model,
        discriminator: keras.Model,
        latent_dim: int,
        seed: int | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.latent_dim = latent_dim
        self.noise = keras.random.SeedGenerator(seed or 0)
        self.g_tracker = keras.metrics.Mean(name="g_loss")
        self.d_tracker = keras.metrics.Mean(name="d_loss")

    def call(self, x: Any, training: bool = False) -> Any:
        return self.discriminator(x, training=training)

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        training: bool = True,
    ) -> Any:
        logit_real, feat_real = y_pred
        z = keras.random.normal((ops.shape(x)[0], self.latent_dim), seed=self.noise)
        fake = self.generator(z, training=training)
        disc = self.discriminator
        logit_fake, _ = disc(ops.stop_gradient(fake), training=training)
        d_loss = 0.5 * (bce_with_logits(1.0, logit_real) + bce_with_logits(0.0, logit_fake))

        logit_g, feat_g = call_frozen(disc, fake, training)
        matching = ops.mean(
            ops.square(ops.mean(ops.stop_gradient(feat_real), axis=0) - ops.mean(feat_g, axis=0))
        )
        g_loss = bce_with_logits(1.0, logit_g) + matching
        self.g_tracker.update_state(g_loss)
        self.d_tracker.update_state(d_loss)
        return g_loss + d_loss


class IziEncoderNet(keras.Model):
    """f-AnoGAN izi_f: train E with G and D frozen; loss = image MSE + kappa * feature MSE."""

    def __init__(
        self,
        encoder: keras.Model,
        generator: keras.Model,
        discriminator: keras.Model,
        kappa: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.encoder = encoder
        self.generator = generator
        self.discriminator = discriminator
        self.generator.trainable = False
        self.discriminator.trainable = False
        self.kappa = float(kappa)
        self.rec_tracker = keras.metrics.Mean(name="rec")

    def call(self, x: Any, training: bool = False) -> Any:
        return self.generator(self.encoder(x, training=training), training=False)

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        training: bool = True,
    ) -> Any:
        x = ops.cast(x, "float32")
        _, feat_real = self.discriminator(x, training=False)
        _, feat_fake = self.discriminator(y_pred, training=False)
        rec = ops.mean(ops.square(x - y_pred))
        self.rec_tracker.update_state(rec)
        return rec + self.kappa * ops.mean(ops.square(feat_real - feat_fake))


class LatentSearch(keras.Model):
    """The batch's latent codes as the only trainable weight; G and D stay frozen.

    Optimising with ``train_on_batch`` keeps the search backend-agnostic: every record's z
    moves at once, and the mean loss gives each z its own gradient (Adam is scale-free).
    """

    def __init__(
        self,
        generator: keras.Model,
        discriminator: keras.Model,
        batch_size: int,
        latent_dim: int,
        lam: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.generator.trainable = False
        self.discriminator.trainable = False
        self.lam = float(lam)
        self.z = self.add_weight(shape=(batch_size, latent_dim), initializer="zeros", name="z")

    def call(self, x: Any, training: bool = False) -> Any:
        return self.generator(self.z, training=False)

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        training: bool = True,
    ) -> Any:
        x = ops.cast(x, "float32")
        _, feat_real = self.discriminator(x, training=False)
        _, feat_fake = self.discriminator(y_pred, training=False)
        residual = per_sample_mean(ops.abs(x - y_pred))
        disc = per_sample_mean(ops.abs(feat_real - feat_fake))
        return ops.mean((1.0 - self.lam) * residual + self.lam * disc)


class AnoGAN(GANDetector):
    """AnoGAN detector (dense or convolutional), scoring by latent search or izi_f encoder.

    Score components: ``reconstruction`` = R(x), ``discriminator`` = D(x) (both above);
    ``score`` = (1 - lambda) * R + lambda * D exactly as in the paper (no rescaling).
    """

    name = "anogan"
    subnet_names = ("generator", "discriminator", "encoder")
    score_formula = "(1 - lambda) * reconstruction + lambda * discriminator (Schlegl et al. 2017)"

    def __init__(
        self,
        variant: str = "auto",
        latent_dim: int | None = None,
        hidden: tuple[int, ...] = (64, 32),
        filters: int | None = None,
        lam: float = 0.1,
        kappa: float = 1.0,
        mode: str = "search",
        search_steps: int = 100,
        search_lr: float = 0.05,
        search_batch: int = 512,
        learning_rate: float = 2e-4,
        beta_1: float = 0.5,
        epochs: int = 15,
        encoder_epochs: int | None = None,
        batch_size: int = 64,
        patience: int = 5,
        validation_fraction: float = 0.15,
        d_collapse_threshold: float = 1e-5,
        mixed_precision: bool = False,
        seed: int | None = 0,
        verbose: int = 0,
        devices: int | str = 1,
    ) -> None:
        super().__init__()
        if mode not in ("search", "encoder"):
            raise ValueError(f"AnoGAN mode must be 'search' or 'encoder', not {mode!r}")
        self.variant = variant
        self.latent_dim = latent_dim
        self.hidden = tuple(hidden)
        self.filters = filters
        self.lam = lam
        self.kappa = kappa
        self.mode = mode
        self.search_steps = search_steps
        self.search_lr = search_lr
        self.search_batch = search_batch
        self.learning_rate = learning_rate
        self.beta_1 = beta_1
        self.epochs = epochs
        self.encoder_epochs = encoder_epochs
        self.batch_size = batch_size
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.d_collapse_threshold = d_collapse_threshold
        self.mixed_precision = mixed_precision
        self.seed = seed
        self.verbose = verbose
        self.devices = devices
        self._residual_model: keras.Model | None = None
        self._search: LatentSearch | None = None

    def component_weights(self) -> dict[str, float]:
        return {"reconstruction": 1.0 - self.lam, "discriminator": self.lam}

    def fit_normaliser(self, X_normal: np.ndarray) -> ScoreComponents:
        """The paper's score is used as is: identity scaling, weights (1 - lambda, lambda)."""
        names = self.component_weights()
        self.normaliser_ = ScoreNormaliser(
            weights=names,
            centre={k: 0.0 for k in names},
            scale={k: 1.0 for k in names},
        )
        return self._raw_in_chunks(X_normal)

    def _build_subnets(self) -> dict[str, keras.Model]:
        latent = self._resolved_latent_dim()
        shape = self._model_shape()
        if self.is_image:
            side, ch = shape[0], shape[2]
            generator = networks.conv_decoder(side, ch, latent, self.conv_filters(), "generator")
            encoder = networks.conv_encoder(side, ch, latent, self.conv_filters(), "encoder")
        else:
            generator = networks.dense_decoder(latent, shape[0], self.hidden, "generator")
            encoder = networks.dense_encoder(shape[0], latent, self.hidden, "encoder")
        return {
            "generator": generator,
            "discriminator": self._build_discriminator(),
            "encoder": encoder,
        }

    # --- training ---------------------------------------------------------------------------
    def _train(self, X_model: np.ndarray, val_model: np.ndarray, epochs: int | None) -> None:
        """Train the GAN, then the izi_f encoder (early-stopped on normal validation data)."""
        epochs = self.epochs if epochs is None else epochs
        devices = resolve_devices(self.devices, self.batch_size)
        X_fit, val_fit = shardable(X_model, devices), shardable(val_model, devices)
        latent = self._resolved_latent_dim()

        with data_parallel(devices):
            self.subnets_ = s = self._build_subnets()
            gan = AnoGANNet(s["generator"], s["discriminator"], latent, self.seed)
            gan.compile(optimizer=keras.optimizers.Adam(self.learning_rate, beta_1=self.beta_1))
            n_fixed = len(shardable(val_fit[:512], devices))
            fixed_z = np.random.default_rng(self.seed).normal(size=(n_fixed, latent))
            fixed_z = fixed_z.astype("float32")

            monitor = StabilityMonitor(
                sample=val_fit[:n_fixed],
                generate=lambda _: s["generator"].predict_on_batch(fixed_z),
                reinit_discriminator=lambda: networks.reinitialise(
                    s["discriminator"], self._build_discriminator
                ),
                d_collapse_threshold=self.d_collapse_threshold,
            )
            gan.fit(
                X_fit,
                epochs=epochs,
                batch_size=self.batch_size,
                shuffle=True,
                verbose=self.verbose,
                callbacks=[monitor],
            )
            izi = IziEncoderNet(s["encoder"], s["generator"], s["discriminator"], self.kappa)
            izi.compile(optimizer=keras.optimizers.Adam(self.learning_rate * 5, beta_1=0.9))
            history = izi.fit(
                X_fit,
                validation_data=(val_fit,),
                epochs=self.encoder_epochs or epochs,
                batch_size=self.batch_size,
                shuffle=True,
                verbose=self.verbose,
                callbacks=[early_stopping("val_rec", self.patience)],
            )
        s["generator"].trainable = True
        s["discriminator"].trainable = True
        set_mixed_precision(False)
        self.training_log_ = monitor.history + [
            {"phase": "izi_f_encoder", "epoch": i + 1, "rec": float(r), "val_rec": float(v)}
            for i, (r, v) in enumerate(
                zip(history.history["rec"], history.history["val_rec"], strict=True)
            )
        ]
        if devices:
            self.training_log_.append(
                {"phase": "data_parallel", "devices": devices, "weights_on": weight_devices(gan)}
            )
        self._residual_model = None
        self._search = None

    # --- scoring ------------------------------------------------------------------------------
    def _residuals(self) -> keras.Model:
        """Inference graph (x, z) -> (G(z), feature residual D(x))."""
        if self._residual_model is None:
            s = self.subnets_
            x_in = keras.Input(self._model_shape())
            z_in = keras.Input((self._resolved_latent_dim(),))
            x_hat = s["generator"](z_in)
            _, feat_real = s["discriminator"](x_in)
            _, feat_fake = s["discriminator"](x_hat)
            disc = per_sample_mean(ops.abs(feat_real - feat_fake))
            self._residual_model = keras.Model([x_in, z_in], [x_hat, disc], name="anogan_scorer")
        return self._residual_model

    def _latent_search(self, x_model: np.ndarray, z0: np.ndarray) -> np.ndarray:
        """Optimise the codes of up to ``search_batch`` records at once, from ``z0``."""
        if self._search is None:
            self._search = LatentSearch(
                self.subnets_["generator"],
                self.subnets_["discriminator"],
                self.search_batch,
                self._resolved_latent_dim(),
                self.lam,
            )
            self._search.compile(optimizer=keras.optimizers.Adam(self.search_lr))
        search = self._search
        n = len(x_model)
        pad = self.search_batch - n
        x_full = np.concatenate([x_model, np.repeat(x_model[:1], pad, axis=0)]) if pad else x_model
        z_full = np.concatenate([z0, np.repeat(z0[:1], pad, axis=0)]) if pad else z0
        search.z.assign(z_full)
        if search.optimizer.built:
            # fresh Adam state per batch; the learning rate is an optimizer variable too and
            # must survive (zeroing it froze every search after the first batch)
            for var in search.optimizer.variables:
                if not var.path.endswith("learning_rate"):
                    var.assign(np.zeros(var.shape, dtype=var.dtype))
        for _ in range(self.search_steps):
            search.train_on_batch(x_full)
        return np.asarray(ops.convert_to_numpy(search.z.value))[:n]

    def _raw_components(self, x: np.ndarray) -> ScoreComponents:
        x_model = self._to_model(x)
        encoder = self.subnets_["encoder"]
        padded, n = pad_to_bucket(x_model)
        z = np.asarray(encoder.predict_on_batch(padded), np.float32)[:n]
        if self.mode == "search":
            z = np.concatenate(
                [self._latent_search(x_model[c], z[c]) for c in iter_chunks(n, self.search_batch)]
            )
        padded_z, _ = pad_to_bucket(z)
        x_hat, disc = self._residuals().predict_on_batch([padded, padded_z])
        x_hat = self._from_model(np.asarray(x_hat, np.float32)[:n])
        residual = np.abs(x - x_hat)
        return ScoreComponents(
            score=np.zeros(n, np.float32),
            reconstruction=residual.reshape(n, -1).mean(axis=1),
            discriminator=np.asarray(disc, np.float32)[:n],
            latent=None,
            contributions=residual,
            reconstructed=x_hat,
        )

    def sample(self, n: int, seed: int | None = None) -> np.ndarray:
        """Synthetic normal records straight from the generator, z ~ N(0, I)."""
        self._check_fitted()
        rng = np.random.default_rng(seed)
        z = rng.normal(size=(n, self._resolved_latent_dim())).astype("float32")
        generated = predict_in_buckets(self.subnets_["generator"], z)
        return self._from_model(generated.astype(np.float32))
