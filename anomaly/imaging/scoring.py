"""Where an image is scored: the bundle's image preprocessing and the one batch-scoring loop.

``anomaly score-images`` (the report), ``anomaly threshold`` on an image folder and
``anomaly spark-score --images`` all decode through ``anomaly.imaging.readers`` with the
options the bundle was trained with (:func:`bundle_image_options`) and score through
:func:`score_batches`, so an image gets the same score and the same decision on every path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anomaly.errors import AnomalyError, BundleError
from anomaly.imaging.readers import (
    Batch,
    ImageMeta,
    ImageReadError,
    PreprocessOptions,
    discover_files,
    iter_batches,
)


@dataclass
class ScoredImages:
    """One batch after scoring: the images, their score components and decisions, and the
    files (or frames) that could not be read while the batch was gathered."""

    metas: list[ImageMeta]
    images: np.ndarray
    components: Any  # detectors.ScoreComponents, None when the batch holds only errors
    flags: np.ndarray
    errors: list[ImageReadError]


def bundle_image_options(
    bundle: Any, dicom_window: tuple[float, float] | None = None
) -> PreprocessOptions:
    """The preprocessing the bundle was trained with (manifest), at the schema's image shape.

    ``dicom_window`` overrides the trained window (a site's preferred preset); geometry and
    channels never change, since the network only knows one shape.
    """
    if bundle.schema.kind != "image":
        raise BundleError(f"{bundle.path}: a {bundle.schema.kind} bundle cannot score images")
    h, w, c = bundle.schema.image_shape
    stored = dict(bundle.manifest.get("preprocessing") or {})
    options = PreprocessOptions.from_dict(
        {"fit": "center_crop", **stored, "height": h, "width": w, "channels": c}
    )
    if dicom_window is not None:
        options = PreprocessOptions(h, w, c, options.fit, dicom_window, options.intensity)
    return options


def stability_notice(bundle: Any) -> str:
    """Why the reconstructions shown may mean nothing: the generator collapsed in training.

    ``anomaly score-images`` says it as a warning and the report page as a note.
    """
    from anomaly.bundle.describe import stability_events

    log = bundle.manifest.get("training", {}).get("log", [])
    if "generator_mode_collapse" not in stability_events(log):
        return ""
    return (
        "the generator collapsed during training (anomaly info, stability line): its "
        "reconstructions look alike for every image, so the reconstruction thumbnails say "
        "nothing; retrain (another --seed, more data) for usable ones"
    )


def score_batches(bundle: Any, batches: Iterable[Batch]) -> Iterator[ScoredImages]:
    """Score each batch of preprocessed images and decide with the bundle's live threshold."""
    for batch in batches:
        components, flags = None, np.zeros(0, dtype=bool)
        if batch.metas:
            components = bundle.score_components(batch.images)
            flags = bundle.decide(components.score)
        yield ScoredImages(batch.metas, batch.images, components, flags, batch.errors)


def score_folder(
    bundle: Any,
    paths: Sequence[Path],
    batch_size: int = 256,
    dicom_window: tuple[float, float] | None = None,
    on_file_done: Callable[[Path], None] | None = None,
) -> Iterator[ScoredImages]:
    """Score image files lazily, one batch in memory at a time (errors ride along)."""
    options = bundle_image_options(bundle, dicom_window)
    return score_batches(bundle, iter_batches(paths, options, batch_size, on_file_done))


def folder_scores(bundle: Any, source: str | Path, batch_size: int = 256) -> tuple[np.ndarray, str]:
    """Scores of every image under ``source`` and a fingerprint of the preprocessed pixels
    (for the threshold history).

    Thresholds are fitted on data an operator vouches for, so an unreadable file stops the
    fit with its reason instead of being skipped.
    """
    files = discover_files(source)
    if not files:
        raise AnomalyError(f"{source}: no PNG/JPEG/TIFF/DICOM/IDX/NPZ files found")
    digest = hashlib.sha256()
    scores = []
    for scored in score_folder(bundle, files, batch_size):
        if scored.errors:
            raise scored.errors[0]
        if scored.metas:
            digest.update(np.ascontiguousarray(scored.images).tobytes())
            scores.append(scored.components.score)
    values = np.concatenate(scores)
    return values, f"sha256:{digest.hexdigest()[:16]}:n={len(values)}"
