"""anomaly.imaging.readers on real files: DICOM (pydicom-written), PNG, IDX, NPZ."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly.imaging.readers import (
    ImageReadError,
    PreprocessOptions,
    discover_files,
    iter_batches,
    load_training_images,
    preprocess,
    read_file,
)
from testsupport.images import (
    cross_image,
    disc_image,
    normal_discs,
    to_stored,
    write_dicom,
    write_png,
    write_truncated_png,
)

MNIST = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "images"
SLOPE, INTERCEPT, CENTER, WIDTH = 2.0, -1024.0, 40.0, 400.0


def _read_all(path: Path, window: tuple[float, float] | None = None) -> list:
    return list(read_file(path, window))


def test_dicom_monochrome2_applies_rescale_and_window_from_tags(tmp_path):
    image = disc_image(16, 5)
    stored = to_stored(image, SLOPE, INTERCEPT, CENTER, WIDTH)
    ds = write_dicom(tmp_path / "a.dcm", stored, "MONOCHROME2", SLOPE, INTERCEPT, (CENTER, WIDTH))
    [(meta, unit)] = _read_all(tmp_path / "a.dcm")
    assert unit.shape == (16, 16, 1)
    np.testing.assert_allclose(unit[:, :, 0], image, atol=0.01)
    assert meta.frame is None
    assert meta.study_uid == ds.StudyInstanceUID
    assert meta.series_uid == ds.SeriesInstanceUID
    assert meta.sop_uid == ds.SOPInstanceUID


def test_dicom_monochrome1_is_inverted(tmp_path):
    image = disc_image(16, 5)
    stored = to_stored(image, SLOPE, INTERCEPT, CENTER, WIDTH)
    write_dicom(tmp_path / "m1.dcm", stored, "MONOCHROME1", SLOPE, INTERCEPT, (CENTER, WIDTH))
    [(_, unit)] = _read_all(tmp_path / "m1.dcm")
    np.testing.assert_allclose(unit[:, :, 0], 1.0 - image, atol=0.01)


def test_dicom_window_option_overrides_tags(tmp_path):
    image = disc_image(16, 5)
    stored = to_stored(image, SLOPE, INTERCEPT, CENTER, WIDTH)
    write_dicom(tmp_path / "w.dcm", stored, "MONOCHROME2", SLOPE, INTERCEPT, (5000.0, 10.0))
    [(_, by_tags)] = _read_all(tmp_path / "w.dcm")
    [(_, by_option)] = _read_all(tmp_path / "w.dcm", (CENTER, WIDTH))
    assert by_tags.max() == 0.0  # the tag window lies far above every value
    np.testing.assert_allclose(by_option[:, :, 0], image, atol=0.01)


def test_dicom_without_window_uses_frame_range(tmp_path):
    stored = np.arange(64, dtype=np.uint16).reshape(8, 8) * 10 + 100
    write_dicom(tmp_path / "nw.dcm", stored)
    [(_, unit)] = _read_all(tmp_path / "nw.dcm")
    assert unit.min() == 0.0 and unit.max() == 1.0


def test_dicom_multiframe_is_read_frame_by_frame(tmp_path):
    frames = np.stack([to_stored(disc_image(16, r), 1, 0, 2048, 4096) for r in (3, 5, 7)])
    ds = write_dicom(tmp_path / "multi.dcm", frames, window=(2048, 4096))
    items = _read_all(tmp_path / "multi.dcm")
    assert [m.frame for m, _ in items] == [0, 1, 2]
    assert {m.sop_uid for m, _ in items} == {ds.SOPInstanceUID}
    sums = [float(u.sum()) for _, u in items]
    assert sums[0] < sums[1] < sums[2]  # growing discs, in frame order


def test_dicom_without_pixel_data_is_a_typed_error(tmp_path):
    write_dicom(tmp_path / "empty.dcm", np.zeros((8, 8)), with_pixels=False)
    with pytest.raises(ImageReadError) as info:
        _read_all(tmp_path / "empty.dcm")
    assert info.value.reason == "no_pixel_data"
    assert "empty.dcm" in str(info.value)


def test_dicom_wrong_bit_depth_is_a_typed_error(tmp_path):
    write_dicom(tmp_path / "bits.dcm", np.zeros((8, 8)), bits_allocated=16, bits_stored=20)
    with pytest.raises(ImageReadError) as info:
        _read_all(tmp_path / "bits.dcm")
    assert info.value.reason == "bit_depth"


def test_dicom_with_short_pixel_data_is_a_typed_error(tmp_path):
    path = tmp_path / "short.dcm"
    write_dicom(path, np.zeros((8, 8)))
    import pydicom

    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[:40]
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError) as info:
        _read_all(path)
    assert info.value.reason == "corrupt_pixel_data"


def test_dicom_with_broken_jpeg_data_is_a_typed_error(tmp_path):
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    path = tmp_path / "jpeg.dcm"
    write_dicom(path, np.zeros((8, 8)), bits_allocated=8, bits_stored=8)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([b"\xff\xd8 not a JPEG stream \xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError) as info:
        _read_all(path)
    assert info.value.reason == "corrupt_pixel_data"
    assert "\n" not in info.value.message


def test_truncated_png_is_a_typed_error(tmp_path):
    path = write_truncated_png(tmp_path / "cut.png", np.random.default_rng(0).random((32, 32)))
    with pytest.raises(ImageReadError) as info:
        _read_all(path)
    assert info.value.reason == "truncated"


def test_text_file_named_png_is_unreadable(tmp_path):
    path = tmp_path / "fake.png"
    path.write_text("not an image")
    with pytest.raises(ImageReadError) as info:
        _read_all(path)
    assert info.value.reason == "unreadable"


def test_png_8_and_16_bit_and_rgb_are_scaled_to_unit(tmp_path):
    image = disc_image(12, 4)
    [(_, eight)] = _read_all(write_png(tmp_path / "g8.png", image))
    [(_, sixteen)] = _read_all(write_png(tmp_path / "g16.png", image, bits=16))
    np.testing.assert_allclose(eight[:, :, 0], image, atol=1 / 255)
    np.testing.assert_allclose(sixteen[:, :, 0], image, atol=1e-4)
    rgb = np.stack([image, np.zeros_like(image), 1 - image], axis=2)
    [(_, colour)] = _read_all(write_png(tmp_path / "rgb.png", rgb))
    assert colour.shape == (12, 12, 3)


def test_preprocess_center_crop_keeps_aspect_resize_stretches():
    wide = np.zeros((10, 30, 1), np.float32)
    wide[:, :5] = 1.0  # a bar at the left edge, outside the centred 10x10 square
    wide[4:6, 14:16] = 1.0  # a dot in the middle
    crop = preprocess(wide, PreprocessOptions(10, 10, 1, fit="center_crop"))
    stretch = preprocess(wide, PreprocessOptions(10, 10, 1, fit="resize"))
    assert crop.shape == stretch.shape == (10, 10, 1)
    assert crop[:, :2].max() == 0.0  # the left bar was cropped away
    assert crop[4:6, 4:6].min() == 1.0  # the centre dot survives, unscaled
    assert stretch[:, 0].min() > 0.9  # the bar is squeezed into the first column


def test_preprocess_channels_luma_and_repeat():
    rgb = np.zeros((4, 4, 3), np.float32)
    rgb[..., 1] = 1.0
    gray = preprocess(rgb, PreprocessOptions(4, 4, 1))
    np.testing.assert_allclose(gray, 0.587, atol=1e-6)
    back = preprocess(gray, PreprocessOptions(4, 4, 3))
    assert back.shape == (4, 4, 3) and np.allclose(back[..., 0], back[..., 2])


def test_options_round_trip_through_a_dict():
    opts = PreprocessOptions(32, 24, 3, "resize", (40.0, 400.0), "zscore")
    assert PreprocessOptions.from_dict(opts.to_dict()) == opts
    with pytest.raises(ValueError):
        PreprocessOptions(8, 8, 2)
    with pytest.raises(ValueError, match="intensity"):
        PreprocessOptions(8, 8, 1, intensity="histogram")
    # bundles written before the option existed read as "none"
    legacy = {k: v for k, v in opts.to_dict().items() if k != "intensity"}
    assert PreprocessOptions.from_dict(legacy).intensity == "none"


@pytest.mark.parametrize("mode", ["stretch", "zscore"])
def test_intensity_normalisation_undoes_exposure_and_contrast(mode):
    """A scan taken darker and with less contrast normalises to the same image."""
    scan = disc_image(32, 9.0)[:, :, None] * 0.6 + 0.2
    other_site = 0.5 * scan + 0.1
    options = PreprocessOptions(32, 32, 1, intensity=mode)
    a, b = preprocess(scan, options), preprocess(other_site, options)
    np.testing.assert_allclose(a, b, atol=2e-3)
    assert 0.0 <= a.min() and a.max() <= 1.0 and a.std() > 0.1
    flat = preprocess(np.full((32, 32, 1), 0.3, np.float32), options)
    np.testing.assert_allclose(flat, 0.5)
    plain = preprocess(other_site, PreprocessOptions(32, 32, 1))
    assert not np.allclose(plain, a, atol=0.05)


def test_discover_is_recursive_and_skips_unknown_files(tmp_path):
    write_png(tmp_path / "a" / "b" / "deep.png", disc_image(8, 3))
    write_dicom(tmp_path / "a" / "IM0001", np.zeros((8, 8)))  # DICOM without a suffix
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / ".hidden.png").write_bytes(b"")
    names = [p.name for p in discover_files(tmp_path)]
    assert names == ["IM0001", "deep.png"]


def test_iter_batches_is_lazy_and_bounded(tmp_path):
    for i in range(25):
        write_png(tmp_path / f"img{i:02d}.png", disc_image(20, 2 + i % 5))
    write_truncated_png(tmp_path / "img99_bad.png", disc_image(20, 5))
    paths = discover_files(tmp_path)
    done: list[Path] = []
    batches = iter_batches(
        paths, PreprocessOptions(8, 8, 1), batch_size=10, on_file_done=done.append
    )
    first = next(batches)
    assert first.images.shape == (10, 8, 8, 1) and len(done) <= 10  # nothing read ahead
    rest = list(batches)
    assert [b.images.shape[0] for b in rest] == [10, 5]
    errors = [e for b in [first, *rest] for e in b.errors]
    assert [e.reason for e in errors] == ["truncated"]
    assert len(done) == 26


def _write_idx(path: Path, frames: np.ndarray, compress: bool) -> Path:
    header = struct.pack(">BBBB", 0, 0, 0x08, frames.ndim) + struct.pack(
        f">{frames.ndim}I", *frames.shape
    )
    data = header + frames.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.mark.parametrize("compress", [False, True])
def test_idx_files_stream_frames(tmp_path, compress):
    frames = (normal_discs(5, 10) * 255).astype(np.uint8)
    name = "x-images-idx3-ubyte" + (".gz" if compress else "")
    items = _read_all(_write_idx(tmp_path / name, frames, compress))
    assert [m.frame for m, _ in items] == list(range(5))
    np.testing.assert_allclose(items[3][1][:, :, 0], frames[3] / 255.0)


def test_truncated_idx_reports_the_frame(tmp_path):
    path = _write_idx(
        tmp_path / "cut-idx3-ubyte", (normal_discs(5, 10) * 255).astype(np.uint8), False
    )
    path.write_bytes(path.read_bytes()[:-150])
    seen = []
    with pytest.raises(ImageReadError) as info:
        for meta, _ in read_file(path):
            seen.append(meta.frame)
    assert info.value.reason == "truncated" and info.value.frame == 3 and seen == []


def test_label_idx_is_not_an_image_array(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 3) + bytes([1, 2, 3]))
    with pytest.raises(ImageReadError) as info:
        _read_all(path)
    assert info.value.reason == "not_an_image_array"


def test_npz_images(tmp_path):
    frames = normal_discs(4, 12)
    np.savez(tmp_path / "set.npz", images=frames)
    items = _read_all(tmp_path / "set.npz")
    assert len(items) == 4 and items[0][1].shape == (12, 12, 1)
    np.savez(tmp_path / "bad.npz", images=frames * 10)
    with pytest.raises(ImageReadError) as info:
        _read_all(tmp_path / "bad.npz")
    assert info.value.reason == "bit_depth"


def test_load_training_images_infers_shape_and_returns_options(tmp_path):
    for i, img in enumerate(normal_discs(6, 20)):
        write_png(tmp_path / "normal" / f"{i}.png", img)
    images, options = load_training_images(tmp_path / "normal", size=16, channels=None)
    assert images.shape == (6, 16, 16, 1) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert options == PreprocessOptions(16, 16, 1).to_dict()
    # scoring the same file through iter_batches gives the same array: no train/serve skew
    [batch] = list(
        iter_batches(discover_files(tmp_path / "normal"), PreprocessOptions.from_dict(options))
    )
    np.testing.assert_array_equal(batch.images, images)


def test_load_training_images_refuses_a_corrupt_file(tmp_path):
    write_png(tmp_path / "ok.png", disc_image(8, 3))
    write_truncated_png(tmp_path / "zz.png", np.random.default_rng(1).random((32, 32)))
    with pytest.raises(ImageReadError, match="truncated"):
        load_training_images(tmp_path, size=None, channels=None)


def test_jpeg_and_tiff_are_read(tmp_path):
    image = (cross_image(16) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "c.jpg", quality=95)
    Image.fromarray(image).save(tmp_path / "c.tif")
    Image.fromarray(image.astype(np.float32) / 255.0, mode="F").save(tmp_path / "f.tiff")
    for name in ("c.jpg", "c.tif", "f.tiff"):
        [(_, unit)] = _read_all(tmp_path / name)
        assert unit.shape == (16, 16, 1)
        assert abs(float(unit.mean()) - image.mean() / 255.0) < 0.02, name


@pytest.mark.skipif(not MNIST.is_dir(), reason="shared MNIST IDX files not present")
def test_reads_the_real_mnist_idx_file():
    path = MNIST / "t10k-images-idx3-ubyte.gz"
    first = [u for _, u in zip(range(3), (u for _, u in read_file(path)), strict=False)]
    assert first[0].shape == (28, 28, 1) and 0.9 < first[0].max() <= 1.0
