"""The detector API shared by GANomaly and AnoGAN (scikit-learn / PyOD conventions).

A detector takes arrays in model space (tabular rows already scaled, images in [0, 1])
and returns arrays; it knows nothing of files, Kafka or the CLI.
"""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("detectors")

# Batch sizes the compiled scoring functions are traced for: a micro-batch is padded up to
# the next one, so a stream of ragged batches costs a handful of compiles, not one per size.
SCORING_BUCKETS = (1, 8, 64, 512, 4096)
# Constructor arguments that are training resources, not model parameters: not in the bundle
RESOURCE_PARAMS = ("verbose", "devices")
# Model-space image side above which the conv networks default to half the width
LARGE_IMAGE_SIDE = 64


def quantile_threshold(scores: np.ndarray, rate: float) -> float:
    """The smallest observed score with at most ``rate`` of ``scores`` above it: the one
    quantile rule for a threshold, shared by ``fit`` and ``anomaly.bundle.thresholds``."""
    return float(np.quantile(np.asarray(scores, dtype=np.float64), 1.0 - rate, method="higher"))


@dataclass
class ScoreComponents:
    """Every part of an anomaly score, one row per record (higher = more anomalous)."""

    score: np.ndarray
    reconstruction: np.ndarray
    discriminator: np.ndarray
    latent: np.ndarray | None
    contributions: np.ndarray
    reconstructed: np.ndarray
    # further scalar components by name (e.g. ``feature_knn``), in a stable order
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    # the input complexity each residual is corrected for (images), not a component itself
    complexity: np.ndarray | None = None
    # per-component difference maps in input shape, consumed when contributions are built
    maps: dict[str, np.ndarray] = field(default_factory=dict)

    def component_names(self) -> list[str]:
        """Names of the scalar components present, in a stable order."""
        names = ["reconstruction", "discriminator"]
        if self.latent is not None:
            names.append("latent")
        return names + list(self.extra)

    def component(self, name: str) -> np.ndarray:
        """One scalar component by name (``score`` included)."""
        if name in self.extra:
            return self.extra[name]
        value = getattr(self, name, None) if name not in ("extra", "complexity", "maps") else None
        if value is None:
            raise KeyError(f"this detector has no {name!r} component")
        return value

    def raw(self) -> dict[str, np.ndarray]:
        """Every scalar component by name (what the score normaliser combines)."""
        return {name: self.component(name) for name in self.component_names()}

    def subset(self, idx: np.ndarray | slice) -> ScoreComponents:
        """The same components for a selection of rows."""
        return ScoreComponents(**{f.name: _take(getattr(self, f.name), idx) for f in fields(self)})

    def __len__(self) -> int:
        return int(self.score.shape[0])

    @staticmethod
    def concatenate(parts: list[ScoreComponents]) -> ScoreComponents:
        """Join the components of consecutive batches."""
        return ScoreComponents(
            **{f.name: _join([getattr(p, f.name) for p in parts]) for f in fields(parts[0])}
        )


def _take(value: Any, idx: np.ndarray | slice) -> Any:
    if value is None:
        return None
    if isinstance(value, dict):
        return {k: v[idx] for k, v in value.items()}
    return value[idx]


def _join(values: list[Any]) -> Any:
    if values[0] is None:
        return None
    if isinstance(values[0], dict):
        return {k: np.concatenate([v[k] for v in values], axis=0) for k in values[0]}
    return np.concatenate(values, axis=0)


LOG_FLOOR = 1e-8


@dataclass
class ScoreNormaliser:
    """Robust per-component scaling fitted on normal validation data, with an optional
    correction for input complexity.

    Components live on different scales (an L1 pixel error, a squared feature distance), so
    the combined score weights ``(c - median) / IQR`` of each, with median and IQR taken
    from normal data only. Test data never enters this fit.

    Complexity (Serra et al., ICLR 2020): a residual is small for simple inputs (a thin "1",
    a smooth lung field) whatever their normality, so a raw residual ranks simple anomalies
    as normal. For the components named in ``complexity`` the normaliser regresses
    ``log c`` on ``log complexity(x)`` over the normal validation split and scores the
    residual of that fit: how much larger the error is than normal inputs of the same
    complexity produce.

    ``one_sided`` components only ever raise a score (their z is clipped at 0): a head
    learned from a few labelled anomalies knows those patterns, not what normal is, so it
    adds evidence where it recognises one and stays silent elsewhere (on the shared tabular
    sets, seed 0, its plain z lowered letter and fault below the banks alone).
    """

    weights: dict[str, float]
    centre: dict[str, float] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)
    complexity: dict[str, list[float]] = field(default_factory=dict)
    one_sided: list[str] = field(default_factory=list)

    def adjusted(
        self, raw: dict[str, np.ndarray], complexity: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Each weighted component after the complexity correction (before scaling)."""
        out = {}
        for name in self.weights:
            values = np.asarray(raw[name], dtype=np.float64)
            if name in self.complexity:
                if complexity is None:
                    raise ValueError(f"component {name!r} needs the input complexity")
                intercept, slope = self.complexity[name]
                log_cx = np.log(np.asarray(complexity, np.float64) + LOG_FLOOR)
                values = np.log(values + LOG_FLOOR) - intercept - slope * log_cx
            out[name] = values
        return out

    def fit(
        self,
        raw: dict[str, np.ndarray],
        complexity: np.ndarray | None = None,
        correct: tuple[str, ...] = (),
    ) -> ScoreNormaliser:
        self.complexity = {}
        if complexity is not None:
            log_cx = np.log(np.asarray(complexity, np.float64) + LOG_FLOOR)
            for name in correct:
                if name not in self.weights:
                    continue
                log_c = np.log(np.asarray(raw[name], np.float64) + LOG_FLOOR)
                slope = 0.0
                if np.var(log_cx) > 1e-12:
                    slope = float(np.cov(log_cx, log_c, bias=True)[0, 1] / np.var(log_cx))
                intercept = float(np.mean(log_c) - slope * np.mean(log_cx))
                self.complexity[name] = [intercept, slope]
        for name, values in self.adjusted(raw, complexity).items():
            q25, q50, q75 = np.percentile(values, [25, 50, 75])
            spread = q75 - q25
            if not np.isfinite(spread) or spread <= 1e-12:
                spread = float(np.std(values)) or 1.0
            self.centre[name] = float(q50)
            self.scale[name] = float(spread)
        return self

    def normalised(
        self, raw: dict[str, np.ndarray], complexity: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Each weighted component on the robust z scale of normal data."""
        out = {}
        for name, values in self.adjusted(raw, complexity).items():
            z = (values - self.centre[name]) / self.scale[name]
            out[name] = np.maximum(z, 0.0) if name in self.one_sided else z
        return out

    def combine(
        self, raw: dict[str, np.ndarray], complexity: np.ndarray | None = None
    ) -> np.ndarray:
        total = sum(self.weights.values())
        combined = np.zeros_like(np.asarray(next(iter(raw.values())), dtype=np.float64))
        for name, z in self.normalised(raw, complexity).items():
            if self.weights[name]:
                combined += self.weights[name] * z
        return (combined / total).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "centre": self.centre,
            "scale": self.scale,
            "complexity": self.complexity,
            "one_sided": self.one_sided,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoreNormaliser:
        return cls(
            weights=dict(data["weights"]),
            centre=dict(data["centre"]),
            scale=dict(data["scale"]),
            complexity={k: list(v) for k, v in data.get("complexity", {}).items()},
            one_sided=list(data.get("one_sided", [])),
        )


def input_complexity(x: np.ndarray) -> np.ndarray:
    """Mean absolute intensity step between neighbouring pixels (total variation per pixel).

    A cheap stand-in for the compressed length Serra et al. use: flat and thin images score
    low, textured ones high, and it needs no codec in the scoring path.
    """
    x = np.asarray(x, dtype=np.float32)
    dy = np.abs(np.diff(x, axis=1)).mean(axis=(1, 2, 3))
    dx = np.abs(np.diff(x, axis=2)).mean(axis=(1, 2, 3))
    return (dx + dy).astype(np.float32)


def split_labelled(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(normal or unlabelled rows, confirmed anomalies) of ``X`` by ``y`` (1 = anomaly)."""
    y = np.asarray(y).reshape(-1)
    if len(y) != len(X):
        raise ValueError(f"y has {len(y)} labels for {len(X)} rows")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y must hold 1 (confirmed anomaly) or 0 (normal or unlabelled)")
    return X[y == 0], X[y == 1]


def pad_to_bucket(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Pad a batch along axis 0 up to the next scoring bucket; returns (padded, n_real)."""
    n = x.shape[0]
    size = next((b for b in SCORING_BUCKETS if b >= n), SCORING_BUCKETS[-1])
    if size == n:
        return x, n
    pad = np.zeros((size - n,) + x.shape[1:], dtype=x.dtype)
    return np.concatenate([x, pad], axis=0), n


def predict_in_buckets(model: Any, x: np.ndarray) -> np.ndarray:
    """``model.predict_on_batch`` over chunks padded to the scoring buckets: a handful of
    input shapes per model, so the compiled function is not retraced for every size."""
    parts = []
    for c in iter_chunks(len(x)):
        padded, n = pad_to_bucket(x[c])
        parts.append(np.asarray(model.predict_on_batch(padded))[:n])
    return np.concatenate(parts)


def iter_chunks(n: int, size: int = SCORING_BUCKETS[-1]) -> list[slice]:
    """Slices that cover ``range(n)`` in chunks of at most ``size``."""
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class Detector:
    """Base class: ``fit`` on normal data; ``score_components``, ``decision_function``,
    ``predict``.

    Subclasses implement ``_train``, ``_raw_components`` and the network (de)serialisation.
    Fitted attributes end with ``_`` (scikit-learn convention).
    """

    name = "detector"
    config_file = "detector.json"
    score_formula = ""
    # whether ``fit(..., y=...)`` learns from labelled anomalies (else they are refused)
    learns_from_labels = False

    def __init__(self) -> None:
        self.threshold_: float | None = None
        self.decision_scores_: np.ndarray | None = None
        self.labels_: np.ndarray | None = None
        self.normaliser_: ScoreNormaliser | None = None
        self.training_log_: list[dict[str, Any]] = []
        self.input_shape_: tuple[int, ...] | None = None

    def get_params(self) -> dict[str, Any]:
        """The constructor's arguments as set (scikit-learn's rule: every hyperparameter is an
        ``__init__`` argument stored under its own name), minus the training resources."""
        names = inspect.signature(type(self).__init__).parameters
        return {
            name: list(value) if isinstance(value, tuple) else value
            for name in names
            if name not in ("self", *RESOURCE_PARAMS)
            for value in [getattr(self, name)]
        }

    # --- to be provided by subclasses -------------------------------------------------
    def _raw_components(self, x: np.ndarray) -> ScoreComponents:
        raise NotImplementedError

    # --- public API ---------------------------------------------------------------------
    def score_components(self, X: np.ndarray) -> ScoreComponents:
        """Every score component per record; ``score`` is the documented weighted combination."""
        self._check_fitted()
        X = self._check_input(X)
        parts = [self._raw_components(X[s]) for s in iter_chunks(len(X))]
        if not parts:
            empty = np.zeros((0,), np.float32)
            shape = (0,) + tuple(self.input_shape_)
            return ScoreComponents(
                empty, empty, empty, None, np.zeros(shape, np.float32), np.zeros(shape, np.float32)
            )
        components = ScoreComponents.concatenate(parts)
        components.score = self.normaliser_.combine(components.raw(), components.complexity)
        self._explain(components)
        return components

    def _explain(self, components: ScoreComponents) -> None:
        """Turn ``contributions`` into a map of the combined score (default: leave as is)."""

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """The combined anomaly score per record (PyOD: higher = more anomalous)."""
        return self.score_components(X).score

    def predict(self, X: np.ndarray) -> np.ndarray:
        """1 where the score exceeds the fitted threshold, else 0."""
        if self.threshold_ is None:
            raise ValueError("no threshold fitted: call fit() first")
        return (self.decision_function(X) > self.threshold_).astype(np.int8)

    def _raw_in_chunks(self, X: np.ndarray) -> ScoreComponents:
        return ScoreComponents.concatenate(
            [self._raw_components(X[s]) for s in iter_chunks(len(X))]
        )

    def fit_normaliser(self, X_normal: np.ndarray) -> ScoreComponents:
        """Fit the per-component scaling of the combined score on normal data; returns the
        raw components of ``X_normal`` so the self-check and threshold need not rescore it."""
        components = self._raw_in_chunks(X_normal)
        raw = components.raw()
        weights = {k: v for k, v in self.component_weights().items() if k in raw}
        one_sided = [n for n in self.supervised_components() if n in weights]
        self.normaliser_ = ScoreNormaliser(weights=weights, one_sided=one_sided).fit(
            raw, components.complexity, correct=self.complexity_corrected()
        )
        return components

    def self_check(
        self, X_normal: np.ndarray, normal: ScoreComponents | None = None
    ) -> dict[str, float]:
        """AUROC of every component (and the score) for normal records vs. locally corrupted
        copies of them (``detectors.selfcheck``); no real anomaly is involved.

        A weighted component below 0.5 ranks the corruptions as *more* normal: it is inverted
        on this data, so its weight is set to 0 and ``component_inverted`` is logged (shown
        by ``anomaly info``), unless it is the only weighted component left. ``normal``: the
        raw components of ``X_normal`` when already computed.
        """
        from detectors.selfcheck import auroc, corrupt

        if normal is None:
            normal = self._raw_in_chunks(X_normal)
        broken = self._raw_in_chunks(corrupt(X_normal, getattr(self, "seed", 0)))
        z_normal = self.normaliser_.normalised(normal.raw(), normal.complexity)
        z_broken = self.normaliser_.normalised(broken.raw(), broken.complexity)
        result = {name: auroc(z_normal[name], z_broken[name]) for name in z_normal}
        weights = self.normaliser_.weights
        events, left_out = [], []
        # a component learned from labels is judged by them, not by synthetic corruptions
        checked = [n for n in weights if n not in self.supervised_components()]
        for name in [n for n in checked if weights[n] and result[n] < 0.5]:
            if sum(1 for w in weights.values() if w) > 1:
                weights[name] = 0.0
                events.append("component_inverted")
                left_out.append(name)
                log.info(
                    "self-check: %s ranks corrupted normals below normals (AUROC %.2f); "
                    "left out of the score",
                    name,
                    result[name],
                )
        result["score"] = auroc(
            self.normaliser_.combine(normal.raw(), normal.complexity),
            self.normaliser_.combine(broken.raw(), broken.complexity),
        )
        self.training_log_.append(
            {
                "phase": "self_check",
                "auroc_vs_corrupted": result,
                "events": sorted(set(events)),
                "left_out": left_out,
            }
        )
        return result

    def component_names(self) -> list[str]:
        """The scalar components ``score_components`` reports, in its order."""
        return ["reconstruction", "discriminator"]

    def complexity_corrected(self) -> tuple[str, ...]:
        """Components whose complexity bias the normaliser removes (none by default)."""
        return ()

    def supervised_components(self) -> tuple[str, ...]:
        """Components learned from labelled anomalies (none by default)."""
        return ()

    def fit_threshold(
        self,
        X_normal: np.ndarray,
        target_fpr: float = 0.01,
        normal: ScoreComponents | None = None,
    ) -> float:
        """``threshold_`` at the (1 - target_fpr) quantile of normal scores (PyOD's contamination),
        with ``decision_scores_`` and ``labels_`` of ``X_normal``.

        ``fit`` calls it on the normal validation split, so ``predict`` works right after
        ``fit``; a bundle later replaces it with the threshold fitted on its calibration split
        and keeps both in one place (the bundle's threshold history is what serving reads).
        """
        if normal is None:
            self.decision_scores_ = self.decision_function(X_normal)
        else:
            self.decision_scores_ = self.normaliser_.combine(normal.raw(), normal.complexity)
        self.threshold_ = quantile_threshold(self.decision_scores_, target_fpr)
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(np.int8)
        return self.threshold_

    def component_weights(self) -> dict[str, float]:
        """The weight of each component in the combined score, before the self-check."""
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if self.normaliser_ is None or self.input_shape_ is None:
            raise ValueError(f"this {self.name} is not fitted yet")

    def _check_input(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if tuple(X.shape[1:]) != tuple(self.input_shape_):
            raise ValueError(
                f"input shape {tuple(X.shape[1:])} does not match the trained shape "
                f"{tuple(self.input_shape_)}"
            )
        if not np.all(np.isfinite(X)):
            raise ValueError("input contains NaN or infinite values")
        return X

    # --- persistence ----------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "detector": self.name,
            "params": self.get_params(),
            "input_shape": list(self.input_shape_),
            "threshold": self.threshold_,
            "normaliser": self.normaliser_.to_dict(),
            "training_log": self.training_log_,
        }

    def _restore_state(self, state: dict[str, Any]) -> None:
        self.input_shape_ = tuple(state["input_shape"])
        self.threshold_ = state["threshold"]
        self.normaliser_ = ScoreNormaliser.from_dict(state["normaliser"])
        self.training_log_ = list(state.get("training_log", []))

    def _write_state(self, directory: Path) -> Path:
        path = directory / self.config_file
        path.write_text(json.dumps(self._state(), indent=2))
        return path


class GANDetector(Detector):
    """What GANomaly and AnoGAN share: image padding, network builders, .keras persistence.

    Convolutional networks need a power-of-two square side, so images are zero-padded
    (centred) into model space and every output is cropped back to the input's shape.
    """

    subnet_names: tuple[str, ...] = ()
    filters: int | None
    hidden: tuple[int, ...]
    latent_dim: int | None
    seed: int | None
    mixed_precision: bool
    validation_fraction: float

    def __init__(self) -> None:
        super().__init__()
        self.subnets_: dict[str, Any] | None = None

    @property
    def is_image(self) -> bool:
        return len(self.input_shape_) == 3

    def _model_shape(self) -> tuple[int, ...]:
        from detectors.networks import padded_side

        if not self.is_image:
            return tuple(self.input_shape_)
        h, w, c = self.input_shape_
        side = padded_side(h, w)
        return (side, side, c)

    def _pads(self) -> tuple[int, int, int]:
        h, w, _ = self.input_shape_
        side = self._model_shape()[0]
        return side, (side - h) // 2, (side - w) // 2

    def _to_model(self, x: np.ndarray) -> np.ndarray:
        """Images zero-padded (centred) to model space; feature vectors unchanged."""
        if not self.is_image:
            return x
        h, w, _ = self.input_shape_
        side, top, left = self._pads()
        if side == h == w:
            return x
        return np.pad(x, ((0, 0), (top, side - h - top), (left, side - w - left), (0, 0)))

    def _from_model(self, x: np.ndarray) -> np.ndarray:
        """Model-space outputs cropped back to the input's shape."""
        if not self.is_image:
            return x
        h, w, _ = self.input_shape_
        _, top, left = self._pads()
        return x[:, top : top + h, left : left + w, :]

    variant: str

    def fit(
        self,
        X: np.ndarray,
        validation: np.ndarray | None = None,
        epochs: int | None = None,
        *,
        y: np.ndarray | None = None,
    ) -> GANDetector:
        """Train on normal data, then, on the normal validation split (a seeded split of X when
        none is given): the score normaliser, the label-free self-check and the threshold
        (PyOD: ``threshold_``, ``decision_scores_``, ``labels_``). ``epochs`` 0 keeps the
        random initial weights.

        ``y`` (semi-supervised, as PyOD's XGBOD takes it): 1 marks a confirmed anomaly among
        the rows of ``X``, 0 a normal or unlabelled row. The anomalies never reach the
        networks, the banks, the validation split or the threshold; they train the label
        head (``_fit_label_head``) once the networks are fitted."""
        X = np.asarray(X, dtype=np.float32)
        anomalies = None
        if y is not None:
            X, anomalies = split_labelled(X, y)
        if self.variant not in ("auto", "dense", "conv"):
            raise ValueError(f"unknown {self.name} variant {self.variant!r}")
        if self.variant != "auto" and (self.variant == "conv") != (X.ndim == 4):
            raise ValueError(f"variant {self.variant!r} does not fit input of shape {X.shape}")
        X_model, val_model, validation = self._prepare_fit(X, validation)
        self._train(X_model, val_model, epochs)
        if anomalies is not None and len(anomalies):
            self._fit_label_head(X_model, self._to_model(self._check_input(anomalies)))
        normal = self.fit_normaliser(validation)
        self.self_check(validation, normal)
        self.fit_threshold(validation, normal=normal)
        return self

    def _train(self, X_model: np.ndarray, val_model: np.ndarray, epochs: int | None) -> None:
        """Train the networks on model-space data (validation: for early stopping only)."""
        raise NotImplementedError

    def _fit_label_head(self, X_model: np.ndarray, anomalies_model: np.ndarray) -> None:
        """Learn from labelled anomalies once the networks are trained (model space)."""
        raise ValueError(f"{self.name} does not learn from labelled anomalies; use ganomaly")

    def _prepare_fit(
        self, X: np.ndarray, validation: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Seed, precision policy and input shape for a fit; returns (train, validation) in
        model space and the checked validation set (a seeded split of X when none is given)."""
        from detectors.training import seed_everything, set_mixed_precision, validation_split

        seed_everything(self.seed)
        set_mixed_precision(self.mixed_precision)
        self.input_shape_ = tuple(X.shape[1:])
        if validation is None:
            X, validation = validation_split(X, self.validation_fraction, self.seed)
        validation = self._check_input(validation)
        return self._to_model(X), self._to_model(validation), validation

    def conv_filters(self) -> int:
        """The first conv block's width (each later block doubles it): ``filters`` when set,
        else 32 up to 64 x 64 and 16 above, where a block costs 4x as much per image and a
        CPU would train 1,000 images at 128 x 128 for half an hour at 32."""
        if self.filters:
            return int(self.filters)
        return 32 if self._model_shape()[0] <= LARGE_IMAGE_SIDE else 16

    def _resolved_latent_dim(self) -> int:
        if self.latent_dim:
            return int(self.latent_dim)
        return 100 if self.is_image else max(4, self.input_shape_[0] // 2)

    def _build_discriminator(self) -> Any:
        from detectors import networks

        shape = self._model_shape()
        if self.is_image:
            return networks.conv_discriminator(shape[0], shape[2], self.conv_filters())
        return networks.dense_discriminator(shape[0], self.hidden)

    # --- persistence ------------------------------------------------------------------------
    def _save_extra(self, directory: Path) -> list[Path]:
        """Files beyond the networks and ``detector.json`` (none by default)."""
        return []

    def _load_extra(self, directory: Path) -> None:
        """Read back what ``_save_extra`` wrote."""

    def save(self, directory: str | Path) -> list[Path]:
        """One native .keras file per network, ``detector.json`` and any extra state."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = []
        for name in self.subnet_names:
            path = directory / f"{name}.keras"
            self.subnets_[name].save(path)
            files.append(path)
        files.extend(self._save_extra(directory))
        files.append(self._write_state(directory))
        return files

    @classmethod
    def load(cls, directory: str | Path, state: dict[str, Any]) -> GANDetector:
        """Rebuild from ``save``'s files in Keras safe mode (no arbitrary code deserialised)."""
        import keras

        directory = Path(directory)
        params = dict(state["params"])
        params["hidden"] = tuple(params["hidden"])
        detector = cls(**params)
        detector._restore_state(state)
        detector.subnets_ = {
            name: keras.saving.load_model(
                directory / f"{name}.keras", safe_mode=True, compile=False
            )
            for name in cls.subnet_names
        }
        detector._load_extra(directory)
        return detector
