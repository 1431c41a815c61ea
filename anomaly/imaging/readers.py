"""Image folders in, model-ready batches out: decoding, the one preprocessing function, batching.

Readers decode each format to float32 ``(H, W, C)`` in [0, 1] at native resolution
(PNG/JPEG/TIFF via Pillow, DICOM via pydicom, IDX and NPZ array files), then
:func:`preprocess` brings every image to the bundle's shape. Training
(:func:`load_training_images`) and scoring (:func:`iter_batches`) both go through
:func:`preprocess`, so there is no train/serve skew.

Geometry (``fit``): ``"center_crop"`` (default) crops the largest centred region with the
target aspect ratio, then resizes it (Pillow's antialiased bilinear filter): shapes are never
stretched, borders may be lost. ``"resize"`` resizes the whole image to the target, stretching
it when the aspect ratios differ. Channels: RGB to grayscale uses ITU-R 601 luma weights;
grayscale to RGB repeats the channel; alpha is dropped.

DICOM: rescale slope/intercept, then the linear VOI window (options, else the file's first
WindowCenter/WindowWidth, else the frame's min..max), then MONOCHROME1 inversion; VOI LUT
sequences and sigmoid VOI functions are not applied. Uncompressed and RLE transfer syntaxes
need only numpy; JPEG baseline decodes through Pillow; JPEG-LS / JPEG 2000 need pylibjpeg
plugins or python-gdcm (not dependencies: such files are reported as
``unsupported_compression``).

Memory: files are read lazily, one at a time, and frames are grouped into batches of
``batch_size``; only one batch (plus the file being decoded) is in memory. IDX files are
streamed frame by frame; an NPZ array and a multi-frame DICOM are read whole (one file).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from anomaly.errors import NPZ_READ_ERRORS, InputError

PIL_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
NPZ_SUFFIXES = frozenset({".npz"})
FIT_MODES = ("center_crop", "resize")
# Per-image intensity normalisation (after geometry), for scans whose exposure and contrast
# differ from site to site:
# - "none": intensities as decoded (DICOM: after rescale and window);
# - "stretch": each image's 1st..99th percentile mapped to [0, 1] (exposure and contrast);
# - "zscore": each image standardised, then mapped to [0, 1] as 0.5 + z / 6 (clipped).
INTENSITY_MODES = ("none", "stretch", "zscore")
MAX_ERRORS_SHOWN = 10  # unreadable training files named in the one-line error
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# IDX type codes -> numpy big-endian dtypes (http://yann.lecun.com/exdb/mnist/).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# Largest single read: a header can claim gigabytes; memory follows the data actually there.
_READ_PIECE = 64 * 1024 * 1024


class ImageReadError(InputError):
    """A file (or one frame of it) that cannot be turned into an image, with a reason code.

    Reason codes: ``unreadable`` (not an image / unknown format), ``truncated``,
    ``no_pixel_data``, ``bit_depth`` (unsupported or inconsistent bits per sample),
    ``corrupt_pixel_data``, ``unsupported_compression``, ``not_an_image_array``.
    """

    def __init__(self, path: str | Path, reason: str, message: str, frame: int | None = None):
        self.path = str(path)
        self.reason = reason
        self.message = " ".join(message.split())  # one line for CSV cells and the page
        self.frame = frame
        where = self.path if frame is None else f"{self.path} frame {frame}"
        super().__init__(where, f"{reason}: {self.message}")


@dataclass(frozen=True)
class PreprocessOptions:
    """How every image is brought to the model's shape; stored in the bundle manifest."""

    height: int
    width: int
    channels: int
    fit: str = "center_crop"
    dicom_window: tuple[float, float] | None = None  # (center, width) overriding file tags
    intensity: str = "none"

    def __post_init__(self) -> None:
        if self.fit not in FIT_MODES:
            raise ValueError(f"fit must be one of {FIT_MODES}, not {self.fit!r}")
        if self.intensity not in INTENSITY_MODES:
            raise ValueError(f"intensity must be one of {INTENSITY_MODES}, not {self.intensity!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, not {self.channels}")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"image size must be positive, not {self.height}x{self.width}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "width": self.width,
            "channels": self.channels,
            "fit": self.fit,
            "dicom_window": None if self.dicom_window is None else list(self.dicom_window),
            "intensity": self.intensity,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessOptions:
        window = data.get("dicom_window")
        return cls(
            height=int(data["height"]),
            width=int(data["width"]),
            channels=int(data["channels"]),
            fit=str(data.get("fit", "center_crop")),
            dicom_window=None if window is None else (float(window[0]), float(window[1])),
            intensity=str(data.get("intensity", "none")),
        )


@dataclass
class ImageMeta:
    """Where one scored image came from: file, frame (multi-frame / arrays) and DICOM UIDs."""

    path: str
    frame: int | None = None
    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class Batch:
    """Preprocessed images ``(n, H, W, C)`` with their metadata and the errors met meanwhile."""

    metas: list[ImageMeta]
    images: np.ndarray
    errors: list[ImageReadError]


# ---------------------------------------------------------------------------------------------
# Discovery


def is_idx_name(name: str) -> bool:
    """IDX files are named like ``t10k-images-idx3-ubyte(.gz)`` or ``*.idx(.gz)``."""
    base = name.lower().removesuffix(".gz")
    return base.endswith("ubyte") or base.endswith(".idx") or "-idx" in base


def discover_files(root: str | Path) -> list[Path]:
    """Every candidate file under ``root`` (recursive, sorted), or ``[root]`` for one file.

    Hidden files and folders are skipped. Unknown suffixes are kept only when the file carries
    a DICOM preamble, so a stray README does not become an error row.
    """
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"no such file or folder: {root}")
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            if _kind_of(path) is not None:
                found.append(path)
    return found


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _kind_of(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in PIL_SUFFIXES:
        return "pil"
    if suffix in DICOM_SUFFIXES:
        return "dicom"
    if suffix in NPZ_SUFFIXES:
        return "npz"
    if is_idx_name(path.name):
        return "idx"
    if _has_dicom_preamble(path):
        return "dicom"
    return None


# ---------------------------------------------------------------------------------------------
# Decoders: each yields (meta, float32 (H, W, C) in [0, 1]) or raises ImageReadError.


def _pil_to_float(img: Image.Image, path: Path) -> np.ndarray:
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("1", "L", "LA", "RGB", "RGBA", "CMYK", "YCbCr"):
        if mode == "1":
            img = img.convert("L")
        elif mode == "LA":
            img = img.getchannel("L")
        elif mode in ("RGBA", "CMYK", "YCbCr"):
            img = img.convert("RGB")
        arr = np.asarray(img, dtype=np.float32) / 255.0
    elif mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.float32) / 65535.0
    elif mode == "I":
        raw = np.asarray(img)
        if raw.min() < 0 or raw.max() > 65535:
            raise ImageReadError(path, "bit_depth", "32-bit integer pixels outside 0..65535")
        arr = raw.astype(np.float32) / 65535.0
    elif mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
            raise ImageReadError(path, "bit_depth", "32-bit float pixels outside [0, 1]")
    else:
        raise ImageReadError(path, "bit_depth", f"unsupported pixel mode {mode!r}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def _read_pil(path: Path) -> Iterator[tuple[ImageMeta, np.ndarray]]:
    try:
        with Image.open(path) as img:
            img.load()
            arr = _pil_to_float(img, path)
    except ImageReadError:
        raise
    except OSError as exc:
        text = str(exc)
        reason = "truncated" if "truncated" in text.lower() else "unreadable"
        if "cannot identify image file" in text:
            text = "not a PNG/JPEG/TIFF image Pillow can identify"
        raise ImageReadError(path, reason, text) from exc
    except (ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageReadError(path, "unreadable", str(exc)) from exc
    yield ImageMeta(path=str(path)), arr


def _first_value(value: Any) -> float:
    """Window tags may be multi-valued (several presets): the first is the default one."""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def dicom_to_unit(pixels: np.ndarray, ds: Any, window: tuple[float, float] | None) -> np.ndarray:
    """Rescale a DICOM frame to modality units, window it to [0, 1], invert MONOCHROME1.

    The window is, in order of precedence: ``window`` (options), the file's first
    WindowCenter/WindowWidth, else the frame's own min..max. The linear VOI function of
    DICOM PS3.3 C.11.2.1.2 is used.
    """
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    values = pixels.astype(np.float32) * slope + intercept
    if window is None and "WindowCenter" in ds and "WindowWidth" in ds:
        window = (_first_value(ds.WindowCenter), _first_value(ds.WindowWidth))
    if window is not None:
        center, width = window
        width = max(width, 1.0)
        unit = (values - (center - 0.5)) / (width - 1.0 if width > 1.0 else 1.0) + 0.5
    else:
        lo, hi = float(values.min()), float(values.max())
        unit = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    unit = np.clip(unit, 0.0, 1.0)
    if str(getattr(ds, "PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        unit = 1.0 - unit
    return unit.astype(np.float32)


def _read_dicom(
    path: Path, window: tuple[float, float] | None
) -> Iterator[tuple[ImageMeta, np.ndarray]]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
        ds.walk(lambda *_: None)  # parse every element now, not lazily on first access
        has_pixels = any(
            tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
        )
        allocated = int(getattr(ds, "BitsAllocated", 0) or 0)
        stored = int(getattr(ds, "BitsStored", allocated) or allocated)
    except InvalidDicomError as exc:
        raise ImageReadError(path, "unreadable", f"not a DICOM file ({exc})") from exc
    except (OSError, EOFError, ValueError, struct.error) as exc:
        raise ImageReadError(path, "truncated", f"DICOM header cannot be parsed: {exc}") from exc
    except Exception as exc:  # noqa: BLE001
        # pydicom parses elements lazily and raises its own assortment of exception classes
        # (unknown VR, byte-length mismatches, ...) for mangled headers: this block only
        # parses untrusted bytes, so any failure here is an unreadable file, not a bug.
        raise ImageReadError(path, "unreadable", f"DICOM header is malformed: {exc}") from exc
    if not has_pixels:
        raise ImageReadError(path, "no_pixel_data", "DICOM file has no Pixel Data element")
    if allocated not in (1, 8, 16, 32, 64) or not 1 <= stored <= allocated:
        raise ImageReadError(
            path, "bit_depth", f"BitsAllocated={allocated}, BitsStored={stored} is not valid"
        )
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        # pydicom says "missing dependencies" when no installed plugin can decode the
        # transfer syntax; any other decoder failure means the compressed data is broken.
        if isinstance(exc, NotImplementedError) or "missing dependencies" in str(exc):
            raise ImageReadError(
                path,
                "unsupported_compression",
                f"{exc} (install pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg or "
                "python-gdcm for this transfer syntax)",
            ) from exc
        raise ImageReadError(path, "corrupt_pixel_data", str(exc)) from exc
    except (ValueError, EOFError, struct.error, AttributeError) as exc:
        raise ImageReadError(path, "corrupt_pixel_data", str(exc)) from exc
    try:
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ImageReadError(path, "unreadable", f"DICOM frame attributes: {exc}") from exc
    if frames == 1:
        pixels = pixels[None]
    if samples == 1:
        pixels = pixels[..., None]
    photometric = str(getattr(ds, "PhotometricInterpretation", "")).strip()
    uids = {
        "study_uid": str(getattr(ds, "StudyInstanceUID", "") or ""),
        "series_uid": str(getattr(ds, "SeriesInstanceUID", "") or ""),
        "sop_uid": str(getattr(ds, "SOPInstanceUID", "") or ""),
    }
    for index in range(pixels.shape[0]):
        frame = pixels[index]
        if samples == 1:
            try:
                unit = dicom_to_unit(frame, ds, window)
            except (ValueError, TypeError, OverflowError) as exc:
                # a mangled rescale or window value (DS strings are free text)
                raise ImageReadError(
                    path, "unreadable", f"DICOM rescale/window attributes: {exc}"
                ) from exc
        elif photometric == "RGB":
            unit = (frame.astype(np.float32) / float(2**stored - 1)).clip(0.0, 1.0)
        else:
            raise ImageReadError(
                path, "unreadable", f"photometric interpretation {photometric!r} not supported"
            )
        meta = ImageMeta(path=str(path), frame=index if frames > 1 else None, **uids)
        yield meta, unit


def _array_to_unit(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32)
        if out.size and (not np.all(np.isfinite(out)) or out.min() < 0.0 or out.max() > 1.0):
            raise ImageReadError(path, "bit_depth", "float array values outside [0, 1]")
        return out
    raise ImageReadError(path, "bit_depth", f"array dtype {arr.dtype} not supported")


def _frames_of_array(path: Path, shape: tuple[int, ...]) -> None:
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3, 4)):
        raise ImageReadError(
            path, "not_an_image_array", f"shape {shape} is not (n, H, W) or (n, H, W, C)"
        )
    if 0 in shape[1:]:
        raise ImageReadError(path, "not_an_image_array", f"shape {shape} has an empty frame")
    bomb = Image.MAX_IMAGE_PIXELS
    if bomb and shape[1] * shape[2] > 2 * bomb:
        raise ImageReadError(
            path,
            "not_an_image_array",
            f"{shape[1]}x{shape[2]} frames exceed Pillow's decompression-bomb limit "
            f"({2 * bomb} pixels)",
        )


def _read_up_to(fh: Any, size: int) -> bytes:
    """``size`` bytes, or fewer when the data ends, read in bounded pieces (a read of n bytes
    allocates n bytes up front, so a header claiming gigabytes must not be taken at its word)."""
    parts = []
    while size > 0:
        piece = fh.read(min(size, _READ_PIECE))
        if not piece:
            break
        parts.append(piece)
        size -= len(piece)
    return b"".join(parts)


def _read_idx(path: Path, chunk: int = 256) -> Iterator[tuple[ImageMeta, np.ndarray]]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
                raise ImageReadError(path, "unreadable", "not an IDX file (bad magic number)")
            dtype = np.dtype(_IDX_DTYPES[head[2]])
            ndim = head[3]
            dims_raw = fh.read(4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise ImageReadError(path, "truncated", "IDX header is cut short")
            shape = struct.unpack(f">{ndim}I", dims_raw)
            _frames_of_array(path, shape)
            per_frame = math.prod(shape[1:]) * dtype.itemsize
            done = 0
            while done < shape[0]:
                n = min(chunk, shape[0] - done)
                raw = _read_up_to(fh, n * per_frame)
                if len(raw) < n * per_frame:
                    raise ImageReadError(
                        path,
                        "truncated",
                        f"IDX data ends after {done + len(raw) // per_frame} of {shape[0]} frames",
                        frame=done + len(raw) // per_frame,
                    )
                block = np.frombuffer(raw, dtype=dtype).reshape((n, *shape[1:]))
                block = _array_to_unit(block.astype(dtype.newbyteorder("=")), path)
                for i in range(n):
                    frame = block[i] if block.ndim == 4 else block[i][:, :, None]
                    yield ImageMeta(path=str(path), frame=done + i), frame
                done += n
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ImageReadError(path, "truncated", f"cannot read IDX data: {exc}") from exc


def _read_npz(path: Path) -> Iterator[tuple[ImageMeta, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.keys())
            key = next(
                (k for k in ("images", "X", "x") if k in keys), keys[0] if len(keys) == 1 else None
            )
            if key is None:
                raise ImageReadError(
                    path, "not_an_image_array", f"NPZ holds {keys}: name the images 'images' or 'X'"
                )
            arr = data[key]
    except ImageReadError:
        raise
    except NPZ_READ_ERRORS as exc:
        raise ImageReadError(path, "unreadable", f"cannot read NPZ: {exc}") from exc
    _frames_of_array(path, arr.shape)
    for i in range(arr.shape[0]):
        frame = _array_to_unit(arr[i], path)
        if frame.ndim == 2:
            frame = frame[:, :, None]
        yield ImageMeta(path=str(path), frame=i), frame


def read_file(
    path: str | Path, dicom_window: tuple[float, float] | None = None
) -> Iterator[tuple[ImageMeta, np.ndarray]]:
    """Decode one file to ``(meta, float32 (H, W, C) in [0, 1])`` per frame, at native size."""
    path = Path(path)
    kind = _kind_of(path)
    if kind == "pil":
        return _read_pil(path)
    if kind == "dicom":
        return _read_dicom(path, dicom_window)
    if kind == "idx":
        return _read_idx(path)
    if kind == "npz":
        return _read_npz(path)
    raise ImageReadError(path, "unreadable", "unknown file type (not PNG/JPEG/TIFF/DICOM/IDX/NPZ)")


# ---------------------------------------------------------------------------------------------
# The one preprocessing function


def preprocess(image: np.ndarray, options: PreprocessOptions) -> np.ndarray:
    """Bring a decoded float ``(H, W, C)`` image in [0, 1] to ``options.shape``.

    Used by training and scoring alike. Channel conversion happens first (luma for
    RGB→gray), then the geometry of ``options.fit``, then a clip to [0, 1] (the bilinear
    filter can overshoot by rounding).
    """
    if image.ndim == 2:
        image = image[:, :, None]
    image = image.astype(np.float32, copy=False)
    c = image.shape[2]
    if c == 4:
        image, c = image[:, :, :3], 3
    if options.channels == 1 and c == 3:
        image = (image @ _LUMA)[:, :, None]
    elif options.channels == 3 and c == 1:
        image = np.repeat(image, 3, axis=2)
    h, w = image.shape[:2]
    if options.fit == "center_crop":
        target_ratio = options.width / options.height
        if w / h > target_ratio:
            new_w = max(1, round(h * target_ratio))
            left = (w - new_w) // 2
            image = image[:, left : left + new_w]
        elif w / h < target_ratio:
            new_h = max(1, round(w / target_ratio))
            top = (h - new_h) // 2
            image = image[top : top + new_h]
        h, w = image.shape[:2]
    if (h, w) != (options.height, options.width):
        size = (options.width, options.height)
        image = np.stack(
            [
                np.asarray(
                    Image.fromarray(np.ascontiguousarray(image[:, :, k]), mode="F").resize(
                        size, Image.Resampling.BILINEAR
                    )
                )
                for k in range(image.shape[2])
            ],
            axis=2,
        )
    return normalise_intensity(np.clip(image, 0.0, 1.0), options.intensity).astype(np.float32)


def normalise_intensity(image: np.ndarray, mode: str) -> np.ndarray:
    """Per-image intensity normalisation (``INTENSITY_MODES``); a flat image maps to 0.5."""
    if mode == "none":
        return image
    if mode == "stretch":
        low, high = np.percentile(image, [1.0, 99.0])
        if high - low < 1e-6:
            return np.full_like(image, 0.5)
        return np.clip((image - low) / (high - low), 0.0, 1.0)
    spread = float(image.std())
    if spread < 1e-6:
        return np.full_like(image, 0.5)
    return np.clip(0.5 + (image - float(image.mean())) / (6.0 * spread), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Iteration


def iter_images(
    paths: Sequence[Path],
    options: PreprocessOptions,
    on_file_done: Callable[[Path], None] | None = None,
) -> Iterator[tuple[ImageMeta, np.ndarray] | ImageReadError]:
    """Preprocessed frames of each file, lazily; errors are yielded (the batch goes on)."""
    for path in paths:
        try:
            for meta, image in read_file(path, options.dicom_window):
                yield meta, preprocess(image, options)
        except ImageReadError as err:
            yield err
        except MemoryError:
            raise
        except Exception as exc:  # a decoder bug in one file must not stop an overnight batch
            yield ImageReadError(path, "unreadable", f"{type(exc).__name__}: {exc}")
        if on_file_done is not None:
            on_file_done(path)


def iter_batches(
    paths: Sequence[Path],
    options: PreprocessOptions,
    batch_size: int = 256,
    on_file_done: Callable[[Path], None] | None = None,
) -> Iterator[Batch]:
    """Batches of at most ``batch_size`` preprocessed frames; memory is bounded by one batch."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    metas: list[ImageMeta] = []
    buffer = np.empty((batch_size, *options.shape), dtype=np.float32)
    errors: list[ImageReadError] = []
    for item in iter_images(paths, options, on_file_done):
        if isinstance(item, ImageReadError):
            errors.append(item)
            continue
        meta, image = item
        buffer[len(metas)] = image
        metas.append(meta)
        if len(metas) == batch_size:
            yield Batch(metas, buffer.copy(), errors)
            metas, errors = [], []
    if metas or errors:
        yield Batch(metas, buffer[: len(metas)].copy(), errors)


def infer_options(
    paths: Sequence[Path],
    size: int | None,
    channels: int | None,
    fit: str = "center_crop",
    dicom_window: tuple[float, float] | None = None,
    intensity: str = "none",
) -> PreprocessOptions:
    """Options for a training folder: missing size/channels come from the first readable image."""
    if size is not None and channels is not None:
        return PreprocessOptions(size, size, channels, fit, dicom_window, intensity)
    for path in paths:
        try:
            _, first = next(iter(read_file(path, dicom_window)))
        except (ImageReadError, StopIteration):
            continue
        h, w, c = first.shape
        return PreprocessOptions(
            height=size or h,
            width=size or w,
            channels=channels or (1 if c == 1 else 3),
            fit=fit,
            dicom_window=dicom_window,
            intensity=intensity,
        )
    raise ImageReadError(paths[0] if paths else "", "unreadable", "no readable image found")


def load_training_images(
    path: str | Path,
    size: int | None,
    channels: int | None,
    fit: str = "center_crop",
    dicom_window: tuple[float, float] | None = None,
    intensity: str = "none",
) -> tuple[np.ndarray, dict[str, Any]]:
    """All images under ``path`` as float32 NHWC in [0, 1] plus the preprocessing options dict.

    Training needs the whole set in memory (the model fits on arrays); scoring streams.
    Unreadable files raise: a training set should be clean, and silently dropping normals
    would hide a broken export. Every unreadable file is named at once, so one run finds
    them all.
    """
    paths = discover_files(path)
    if not paths:
        raise ImageReadError(path, "unreadable", "no PNG/JPEG/TIFF/DICOM/IDX/NPZ files found")
    options = infer_options(paths, size, channels, fit, dicom_window, intensity)
    parts: list[np.ndarray] = []
    errors: list[ImageReadError] = []
    for batch in iter_batches(paths, options, batch_size=1024):
        errors.extend(batch.errors)
        parts.append(batch.images)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        shown = "; ".join(str(e) for e in errors[:MAX_ERRORS_SHOWN])
        more = (
            f"; and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        )
        raise ImageReadError(
            path,
            "unreadable",
            f"{len(errors)} files cannot be trained on (fix or remove them): {shown}{more}",
        )
    return np.concatenate(parts, axis=0), options.to_dict()
