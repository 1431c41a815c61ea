"""anomaly.report: CSVs, thumbnails and index.html from arrays; rendering in headless Chromium."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from imaging_fixtures import cross_image, normal_discs
from PIL import Image

from anomaly.imaging import ImageMeta, ImageReadError
from anomaly.report import CHROMIUM, heatmap_overlay, image_is_blank, screenshot, write_report

needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"{CHROMIUM} not installed (apt-get install -y chromium) - report not rendered",
)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _arrays(n: int = 6, size: int = 16):
    inputs = normal_discs(n, size)[..., None]
    inputs[-1, :, :, 0] = cross_image(size)  # one image the "model" cannot reconstruct
    recon = np.repeat(normal_discs(1, size, seed=5)[..., None], n, axis=0)
    residual = np.abs(inputs - recon)
    scores = residual.reshape(n, -1).mean(axis=1)
    scores[-1] = scores.max() + 0.1  # the cross is the clear outlier
    return inputs, recon, residual, scores


@pytest.fixture
def report(tmp_path):
    inputs, recon, residual, scores = _arrays()
    metas = [ImageMeta(path=f"scan/img{i}.png") for i in range(5)] + [
        ImageMeta(
            path="scan/study.dcm", frame=2, study_uid="1.2.3", series_uid="1.2.4", sop_uid="1.2.5"
        )
    ]
    threshold = float(np.sort(scores)[-3])  # the two highest scores are flagged
    errors = [ImageReadError("scan/cut.png", "truncated", "image file is truncated")]
    summary = write_report(
        tmp_path / "rep",
        metas,
        inputs,
        recon,
        residual,
        scores,
        {"reconstruction": scores, "latent": scores * 2},
        threshold,
        errors,
    )
    return summary, scores, threshold


def test_scores_csv_has_one_row_per_image_with_uids_and_flags(report):
    summary, scores, threshold = report
    rows = _rows(summary.out_dir / "scores.csv")
    assert list(rows[0]) == [
        "path",
        "frame",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "score",
        "reconstruction",
        "latent",
        "is_anomaly",
    ]
    assert len(rows) == 6
    dicom = rows[5]
    assert (dicom["frame"], dicom["StudyInstanceUID"], dicom["SOPInstanceUID"]) == (
        "2",
        "1.2.3",
        "1.2.5",
    )
    assert rows[0]["frame"] == "" and rows[0]["StudyInstanceUID"] == ""
    for row, score in zip(rows, scores, strict=True):
        assert float(row["score"]) == pytest.approx(score, rel=1e-5)
        assert row["is_anomaly"] == str(int(score > threshold))
    assert summary.flagged == 2 and summary.scored == 6


def test_errors_csv_and_page_list_unreadable_files(report):
    summary, _, _ = report
    [row] = _rows(summary.out_dir / "errors.csv")
    assert row == {
        "path": "scan/cut.png",
        "frame": "",
        "reason": "truncated",
        "message": "image file is truncated",
    }
    page = (summary.out_dir / "index.html").read_text()
    assert "scan/cut.png" in page and "truncated" in page
    assert summary.failed_files == 1


def test_index_references_every_flagged_image_with_three_thumbnails(report):
    summary, scores, threshold = report
    page = (summary.out_dir / "index.html").read_text()
    assert "http://" not in page and "https://" not in page  # opens offline
    cards = page.split("<section class='card'")[1:]
    assert len(cards) == 2
    # highest score first; the cross (last image, a DICOM frame) scores highest
    assert "scan/study.dcm" in cards[0] and "frame 2" in cards[0]
    for card, path in zip(cards, summary.flagged_paths, strict=True):
        assert path in card
        thumbs = [part.split("'")[0] for part in card.split("src='")[1:]]
        assert len(thumbs) == 3
        for rel in thumbs:
            with Image.open(summary.out_dir / rel) as img:
                assert img.size == (16, 16)
        assert f"{threshold:.6g}" in card


def test_heatmap_overlay_colours_only_where_the_residual_is():
    image = np.zeros((8, 8, 1), np.float32)
    residual = np.zeros((8, 8, 1), np.float32)
    residual[2:4, 2:4] = 0.5
    overlay = heatmap_overlay(image, residual, vmax=0.5)
    hot = overlay[2:4, 2:4].mean()
    cold = overlay[5:, 5:].mean()
    assert hot > 0.5 and cold < 0.05


def test_image_is_blank_detects_a_flat_png(tmp_path):
    Image.new("RGB", (200, 100), (255, 255, 255)).save(tmp_path / "flat.png")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((100, 200, 3)) * 255).astype(np.uint8)).save(tmp_path / "noise.png")
    assert image_is_blank(tmp_path / "flat.png")
    assert not image_is_blank(tmp_path / "noise.png")


@needs_chromium
def test_report_renders_in_headless_chromium(report, tmp_path):
    summary, _, _ = report
    png = screenshot(summary.out_dir / "index.html", tmp_path / "shot.png", 1000, 700)
    with Image.open(png) as img:
        assert img.size == (1000, 700)
        pixels = np.asarray(img.convert("RGB"))
    assert not image_is_blank(png)
    # the heatmap thumbnails were loaded from relative files: inferno's saturated
    # yellow/orange pixels exist only if the <img> elements rendered
    r, g, b = (pixels[..., k].astype(int) for k in range(3))
    assert int(((r > 200) & (b < 120) & (r - b > 120)).sum()) > 50
