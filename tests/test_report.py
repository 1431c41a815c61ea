"""anomaly.imaging.report: CSVs, thumbnails and index.html; rendering in headless Chromium."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly.imaging.readers import ImageMeta, ImageReadError
from anomaly.imaging.report import heatmap_overlay, write_report
from testsupport.browser import CHROMIUM, image_is_blank, screenshot
from testsupport.images import cross_image, normal_discs

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
    cards = [c.split("</section>")[0] for c in page.split("<section class='card'")[1:]]
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


def test_table_rows_show_their_input_and_only_the_shown_thumbnails_stay(tmp_path):
    """Every row of the page's table has its input thumbnail, below the threshold too; an
    image pushed out of the table by higher scores leaves no thumbnail behind."""
    inputs, recon, residual, scores = _arrays(n=8)
    metas = [ImageMeta(path=f"scan/img{i}.png") for i in range(8)]
    threshold = float(np.sort(scores)[-2])  # only the cross is flagged
    summary = write_report(
        tmp_path / "rep", metas, inputs, recon, residual, scores,
        {"reconstruction": scores}, threshold, max_table_rows=4,
    )  # fmt: skip
    page = (summary.out_dir / "index.html").read_text()
    table = page.split('id="all"')[1]
    rows = table.split("<tr")[2:]  # after the header row
    assert len(rows) == 4
    shown = [row.split("src='")[1].split("'")[0] for row in rows]
    for rel in shown:
        with Image.open(summary.out_dir / rel) as img:
            assert img.size == (16, 16)
        assert rel.startswith("thumbs/") and "_input.png" in rel
    top4 = np.argsort(-scores, kind="stable")[:4]
    assert sorted(shown) == sorted(f"thumbs/{i:07d}_input.png" for i in top4)
    inputs_on_disk = sorted(p.name for p in (summary.out_dir / "thumbs").glob("*_input.png"))
    assert inputs_on_disk == sorted(Path(rel).name for rel in shown)  # nothing left behind
    assert summary.flagged == 1 and "anomaly" in rows[0]


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


# ---------------------------------------------------------------------------------------------
# End to end through the CLI: train on PNG discs, score a mixed folder of PNG and DICOM files


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    import pydicom
    from click.testing import CliRunner

    from anomaly.cli import main
    from testsupport.images import (
        disc_image,
        to_stored,
        write_dicom,
        write_png,
        write_truncated_png,
    )

    root = tmp_path_factory.mktemp("e2e")
    for i, img in enumerate(normal_discs(160, 16, seed=1)):
        write_png(root / "train" / f"n{i:03d}.png", img)
    runner = CliRunner()
    options = "--epochs 10 --batch-size 16 --filters 8 --latent-dim 16 --target-fpr 0.05 --quiet"
    trained = runner.invoke(
        main,
        ["train", str(root / "train"), "--images", "--out", str(root / "bundle"), *options.split()],
    )
    assert trained.exit_code == 0, trained.output
    scan = root / "scan"
    for i, img in enumerate(normal_discs(6, 16, seed=2)):
        write_png(scan / "png" / f"normal{i}.png", img)
    write_png(scan / "png" / "cross.png", cross_image(16))
    write_png(scan / "png" / "white.png", np.ones((16, 16), np.float32))
    write_truncated_png(scan / "png" / "broken.png", np.random.default_rng(0).random((16, 16)))
    disc = disc_image(16, 4)
    window = (40.0, 400.0)
    mono2 = write_dicom(
        scan / "dcm" / "mono2.dcm",
        to_stored(disc, 2, -1024, *window),
        "MONOCHROME2",
        2,
        -1024,
        window,
    )
    # MONOCHROME1 stores the inverted image: after inversion it is a normal disc again
    write_dicom(
        scan / "dcm" / "mono1.dcm",
        to_stored(1 - disc, 2, -1024, *window),
        "MONOCHROME1",
        2,
        -1024,
        window,
    )
    frames = np.stack(
        [to_stored(x, 1, 0, 2048, 4096) for x in (disc, cross_image(16), disc_image(16, 5))]
    )
    multi = write_dicom(scan / "dcm" / "series" / "multi.dcm", frames, window=(2048, 4096))
    write_dicom(scan / "dcm" / "nopixels.dcm", np.zeros((16, 16)), with_pixels=False)
    result = runner.invoke(
        main,
        [
            "score-images",
            "--bundle",
            str(root / "bundle"),
            str(scan),
            "--out",
            str(root / "report"),
        ],
    )
    uids = {
        "mono2": pydicom.dcmread(scan / "dcm" / "mono2.dcm").SOPInstanceUID,
        "multi": multi.SOPInstanceUID,
        "mono2_study": mono2.StudyInstanceUID,
    }
    return root, result, uids


def test_cli_scores_every_readable_frame_and_exits_non_zero(scored):
    root, result, uids = scored
    assert result.exit_code == 1, result.output  # two files could not be read
    assert "scoring files" in result.output  # the progress bar
    rows = _rows(root / "report" / "scores.csv")
    by_name = {(Path(r["path"]).name, r["frame"]): r for r in rows}
    expected = {(f"normal{i}.png", "") for i in range(6)} | {
        ("cross.png", ""),
        ("white.png", ""),
        ("mono1.dcm", ""),
        ("mono2.dcm", ""),
        ("multi.dcm", "0"),
        ("multi.dcm", "1"),
        ("multi.dcm", "2"),
    }
    assert set(by_name) == expected
    assert by_name[("mono2.dcm", "")]["SOPInstanceUID"] == uids["mono2"]
    assert by_name[("mono2.dcm", "")]["StudyInstanceUID"] == uids["mono2_study"]
    assert {by_name[("multi.dcm", f)]["SOPInstanceUID"] for f in "012"} == {uids["multi"]}
    assert by_name[("cross.png", "")]["SOPInstanceUID"] == ""
    for row in rows:
        assert {"reconstruction", "latent", "discriminator"} <= set(row)
        assert row["is_anomaly"] in ("0", "1")


def test_cli_errors_csv_lists_the_corrupt_files_with_reasons(scored):
    root, _, _ = scored
    errors = {Path(r["path"]).name: r["reason"] for r in _rows(root / "report" / "errors.csv")}
    assert errors == {"broken.png": "truncated", "nopixels.dcm": "no_pixel_data"}


def test_cli_report_references_every_flagged_image(scored):
    root, _, _ = scored
    rows = _rows(root / "report" / "scores.csv")
    flagged = [r for r in rows if r["is_anomaly"] == "1"]
    assert flagged, "the white image and the cross should be above a 5 % FPR threshold"
    assert any(Path(r["path"]).name == "white.png" for r in flagged)
    page = (root / "report" / "index.html").read_text()
    cards = page.split("<section class='card'")[1:]
    assert len(cards) == len(flagged)
    for row in flagged:
        label = row["path"] + ("" if row["frame"] == "" else f" · frame {row['frame']}")
        [card] = [c for c in cards if "<h3>#" in c and label in c.split("</h3>")[0]]
        for rel in [part.split("'")[0] for part in card.split("src='")[1:]]:
            assert (root / "report" / rel).is_file()
    scores = [float(r["score"]) for r in flagged]
    ranks = [page.index(f"score <b>{s:.6g}</b>") for s in sorted(scores, reverse=True)]
    assert ranks == sorted(ranks)  # highest score first
    # the heatmap is the score's own map, on a scale tied to the alert threshold
    assert "Score heatmap" in page and "differs from its nearest normal" in page


@needs_chromium
def test_cli_report_renders_non_blank_in_chromium(scored, tmp_path):
    root, _, _ = scored
    png = screenshot(root / "report" / "index.html", tmp_path / "report.png", 1200, 900)
    assert not image_is_blank(png)


def test_generate_writes_synthetic_normal_pngs(scored, tmp_path):
    from click.testing import CliRunner

    from anomaly.cli import main

    root, _, _ = scored
    result = CliRunner().invoke(
        main,
        ["generate", "--bundle", str(root / "bundle"), "-n", "5", "--out", str(tmp_path / "gen")],
    )
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "gen").glob("*.png"))
    assert len(files) == 5
    with Image.open(files[0]) as img:
        assert img.size == (16, 16) and img.mode == "L"


def test_generate_writes_tabular_samples_in_schema_order_and_original_units(tiny_bundle, tmp_path):
    from click.testing import CliRunner

    from anomaly.cli import main

    out = tmp_path / "gen"
    result = CliRunner().invoke(
        main, ["generate", "--bundle", str(tiny_bundle), "-n", "1500", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    rows = _rows(out / "samples.csv")
    assert list(rows[0]) == ["f0", "f1", "f2", "f3", "amount"]
    assert len(rows) == 1500  # more than one sampling chunk
    values = np.array([[float(v) for v in r.values()] for r in rows])
    assert np.isfinite(values).all()
    # "amount" was trained as |N(0, s)| * 100 through a log1p transform: samples come back in
    # those units (tens to hundreds), not in the model's standardised space
    assert 10.0 < float(np.median(values[:, 4])) < 1000.0
