"""Train a detector on normal data and write a bundle with an initial threshold.

The normal rows are split three ways, seeded: train (fits the scaler and the networks),
validation (early stopping and the score normalisation), calibration (the initial threshold
at a target false-positive rate). Rows labelled as anomalies never enter any of the three;
GANomaly learns from them (its label head, ``detectors.supervision``), other detectors
leave them out.
The bundle also keeps the binned distribution of the features and calibration scores, the
reference ``anomaly drift`` and the service's drift gauges compare live data with.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from anomaly.bundle.bundle import Bundle, fingerprint, sha256_file
from anomaly.bundle.preprocessing import TabularPreprocessor
from anomaly.bundle.profile import build_profile
from anomaly.bundle.schema import Schema
from anomaly.bundle.thresholds import fit_threshold
from anomaly.errors import AnomalyError

log = logging.getLogger(__name__)


def split_normal(
    n: int, validation_fraction: float, calibration_fraction: float, seed: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded index split of normal rows into (train, validation, calibration)."""
    order = np.random.default_rng(seed).permutation(n)
    n_cal = max(1, int(round(n * calibration_fraction)))
    n_val = max(1, int(round(n * validation_fraction)))
    if n - n_cal - n_val < 8:
        raise AnomalyError(f"too few normal rows to train on ({n}); need at least ~50")
    return order[n_cal + n_val :], order[n_cal : n_cal + n_val], order[:n_cal]


def _check_devices(devices: int | str, batch_size: int) -> int:
    """The number of devices to train on, checked before anything is read or fitted."""
    from detectors.training import resolve_devices

    try:
        return max(1, len(resolve_devices(devices, batch_size)))
    except ValueError as exc:
        raise AnomalyError(f"--devices {devices}: {exc}") from None


def learns_from_labels(kind: str) -> bool:
    """Whether detector ``kind`` can learn from labelled anomalies (GANomaly's label head)."""
    from detectors import DETECTORS

    return bool(getattr(DETECTORS.get(kind), "learns_from_labels", False))


def make_detector(kind: str, params: dict[str, Any]) -> Any:
    from detectors import DETECTORS

    if kind not in DETECTORS:
        raise AnomalyError(f"unknown detector {kind!r}; choose one of {sorted(DETECTORS)}")
    return DETECTORS[kind](**params)


def train_bundle(
    X: np.ndarray,
    out_dir: str | Path,
    schema: Schema,
    *,
    labels: np.ndarray | None = None,
    learn_from_labels: bool = True,
    labels_source: str | None = None,
    lineage: dict[str, Any] | None = None,
    detector: str = "ganomaly",
    detector_params: dict[str, Any] | None = None,
    log1p_columns: list[str] | tuple[str, ...] = (),
    scaler: str = "standard",
    image_preprocessing: dict[str, Any] | None = None,
    target_fpr: float = 0.01,
    validation_fraction: float = 0.15,
    calibration_fraction: float = 0.15,
    seed: int | None = 0,
    name: str | None = None,
    source: str | None = None,
    devices: int | str = 1,
) -> Bundle:
    """Fit on the normal rows of ``X`` (original units / images in [0, 1]); write a bundle.

    ``devices``: train data-parallel on that many devices (or ``"all"``; JAX backend only);
    the bundle is the same as a one-device run's. ``labels``: 1 = confirmed anomaly, 0 =
    normal or unlabelled; with ``learn_from_labels`` a detector that can learns from the
    anomalies (``labels_source`` says where the labels came from, for the manifest).
    ``lineage``: where a retrain's rows came from (``anomaly.monitoring.retrain``).
    """
    n_devices = _check_devices(devices, int((detector_params or {}).get("batch_size", 64)))
    X = np.asarray(X)
    anomalies = X[:0]
    if labels is not None:
        from detectors.base import split_labelled

        try:
            X, anomalies = split_labelled(X, labels)
        except ValueError as exc:  # an NPZ's y holding other values than 0 and 1
            raise AnomalyError(f"labels: {exc}") from None
    learned = (
        bool(len(anomalies))
        and learn_from_labels
        and schema.kind == "tabular"
        and learns_from_labels(detector)
    )
    if len(anomalies):
        log.info(
            "training on %d normal rows; %d labelled anomalies %s",
            len(X),
            len(anomalies),
            "train the label head" if learned else "left out",
        )
    train_idx, val_idx, cal_idx = split_normal(
        len(X), validation_fraction, calibration_fraction, seed
    )
    preprocessor = None
    if schema.kind == "tabular":
        preprocessor = TabularPreprocessor(schema.feature_names, list(log1p_columns), scaler)
        preprocessor.fit(X[train_idx])
        to_model = preprocessor.transform
        preprocessing = preprocessor.to_dict()
    else:
        to_model = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
        preprocessing = {"kind": "image", **(image_preprocessing or {})}

    params = {"seed": seed, **(detector_params or {}), "devices": n_devices}
    model = make_detector(detector, params)
    started = time.perf_counter()
    if learned:
        fit_rows = np.concatenate([X[train_idx], anomalies])
        y = np.r_[np.zeros(len(train_idx), np.int8), np.ones(len(anomalies), np.int8)]
        model.fit(to_model(fit_rows), validation=to_model(X[val_idx]), y=y)
    else:
        model.fit(to_model(X[train_idx]), validation=to_model(X[val_idx]))
    seconds = time.perf_counter() - started

    calibration = to_model(X[cal_idx])
    cal_scores = model.decision_function(calibration)
    import keras

    training = {
        "source": source,
        # lets evaluate / threshold / drift warn when handed the very file trained on
        "source_sha256": sha256_file(Path(source)) if source and Path(source).is_file() else None,
        "seed": seed,
        "devices": n_devices,
        "n_train": int(len(train_idx)),
        "n_validation": int(len(val_idx)),
        "n_calibration": int(len(cal_idx)),
        "labels": {
            "anomalies": int(len(anomalies)),
            "learned": learned,
            "source": labels_source,
        },
        **({"lineage": lineage} if lineage else {}),
        "seconds": round(seconds, 2),
        "keras_backend": keras.backend.backend(),
        "epochs_run": sum(1 for e in model.training_log_ if "phase" not in e),
        "calibration_score_quantiles": {
            str(q): float(np.quantile(cal_scores, q)) for q in (0.5, 0.9, 0.99)
        },
        "log": model.training_log_,
    }
    bundle = Bundle.create(
        out_dir,
        model,
        schema,
        preprocessing,
        name or Path(out_dir).name,
        training,
        preprocessor=preprocessor,
        drift_reference=build_profile(
            X if schema.kind == "tabular" else None, schema.feature_names, cal_scores
        ),
    )
    fit = fit_threshold("quantile", cal_scores, target_fpr=target_fpr)
    bundle.append_threshold(
        {**fit.to_entry(fingerprint(X[cal_idx])), "note": "initial: normal calibration split"}
    )
    return bundle
