"""Synthetic *normal* records or images from a bundle's generator, for data augmentation.

Tabular bundles write ``samples.csv`` in the bundle's schema (column order, original units:
``Bundle.sample`` inverse-transforms the preprocessing). Image bundles write one 8-bit PNG
per sample (16-bit would add no information: the generator's precision is far coarser).
Samples are drawn and written in chunks, so ``-n`` can be large without holding all of them.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CHUNK = 1024


def _png(image: np.ndarray, path: Path) -> None:
    pixels = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(path)


def generate(bundle: Any, n: int, out_dir: str | Path, seed: int | None = 0) -> list[Path]:
    """Write ``n`` synthetic normal samples under ``out_dir``; returns the files written."""
    if n < 1:
        raise ValueError("n must be at least 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    chunk_seeds = rng.integers(0, 2**31 - 1, size=(n + CHUNK - 1) // CHUNK)
    written: list[Path] = []
    if bundle.schema.kind == "image":
        width = max(5, len(str(n - 1)))
        for k, start in enumerate(range(0, n, CHUNK)):
            images = bundle.sample(min(CHUNK, n - start), int(chunk_seeds[k]))
            for i, image in enumerate(images):
                path = out_dir / f"sample_{start + i:0{width}d}.png"
                _png(image, path)
                written.append(path)
        return written
    path = out_dir / "samples.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(bundle.schema.feature_names)
        for k, start in enumerate(range(0, n, CHUNK)):
            rows = bundle.sample(min(CHUNK, n - start), int(chunk_seeds[k]))
            writer.writerows([[f"{v:.9g}" for v in row] for row in rows])
    written.append(path)
    return written
