"""Builders of small, real image files (DICOM via pydicom, PNG via Pillow) for the imaging tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def disc_image(
    size: int, radius: float, cx: float | None = None, cy: float | None = None
) -> np.ndarray:
    """A bright disc on a dark background, float in [0, 1] (the 'normal' pattern of the tests)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx = size / 2 if cx is None else cx
    cy = size / 2 if cy is None else cy
    d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    return np.clip(radius + 0.5 - d, 0.0, 1.0).astype(np.float32)


def cross_image(size: int) -> np.ndarray:
    """A bright cross, unlike any disc (the 'anomalous' pattern of the tests)."""
    img = np.zeros((size, size), np.float32)
    mid = size // 2
    img[mid - 1 : mid + 2, 2:-2] = 1.0
    img[2:-2, mid - 1 : mid + 2] = 1.0
    return img


def normal_discs(n: int, size: int, seed: int = 0) -> np.ndarray:
    """``n`` discs with jittered centre and radius, shape (n, size, size)."""
    rng = np.random.default_rng(seed)
    return np.stack(
        [
            disc_image(
                size,
                radius=rng.uniform(size * 0.2, size * 0.3),
                cx=size / 2 + rng.uniform(-2, 2),
                cy=size / 2 + rng.uniform(-2, 2),
            )
            for _ in range(n)
        ]
    )


def write_png(path: Path, image: np.ndarray, bits: int = 8) -> Path:
    """Save a float [0, 1] grayscale (H, W) or RGB (H, W, 3) image as an 8- or 16-bit PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if bits == 16:
        Image.fromarray((image * 65535 + 0.5).astype(np.uint16)).save(path)
    else:
        Image.fromarray((image * 255 + 0.5).astype(np.uint8)).save(path)
    return path


def write_truncated_png(path: Path, image: np.ndarray) -> Path:
    """A PNG whose data stream is cut in half (a broken copy / partial download)."""
    write_png(path, image)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_dicom(
    path: Path,
    frames: np.ndarray,
    photometric: str = "MONOCHROME2",
    slope: float = 1.0,
    intercept: float = 0.0,
    window: tuple[float, float] | None = None,
    bits_allocated: int = 16,
    bits_stored: int = 12,
    with_pixels: bool = True,
    study_uid: str | None = None,
) -> Dataset:
    """A real DICOM Part 10 file holding ``frames`` (stored values, (H, W) or (n, H, W)).

    Pixel values are written as given (uint16); the modality value of a pixel is
    ``stored * slope + intercept``, as a reader must compute it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.asarray(frames)
    multi = frames.ndim == 3
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.PatientID = "TEST"
    ds.Rows, ds.Columns = frames.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if multi:
        ds.NumberOfFrames = frames.shape[0]
    if with_pixels:
        ds.PixelData = frames.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds


def to_stored(
    image: np.ndarray, slope: float, intercept: float, center: float, width: float
) -> np.ndarray:
    """Stored DICOM values whose windowed modality values reproduce ``image`` in [0, 1]."""
    modality = (center - 0.5) + (image - 0.5) * (width - 1.0)
    return np.round((modality - intercept) / slope).astype(np.uint16)
