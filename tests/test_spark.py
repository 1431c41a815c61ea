"""Spark batch scoring (`anomaly spark-score`) in local[2] against the single-process paths.

One Spark session for the module: starting the JVM takes 10-20 s on two cores.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.skipif(
    not (os.environ.get("JAVA_HOME") or shutil.which("java")),
    reason="Spark needs a Java runtime (17+): none on PATH or JAVA_HOME",
)


@pytest.fixture(scope="module")
def spark():
    from anomaly.spark.scoring import session

    spark = session("local[2]")
    yield spark
    spark.stop()


def _records_csv(path: Path, rows: np.ndarray, ids: list[str] | None = None) -> Path:
    from testsupport.data import FEATURES

    header = (["id"] if ids is not None else []) + FEATURES
    lines = [",".join(header)]
    for i, row in enumerate(rows):
        cells = [f"{v:.9g}" for v in row]
        lines.append(",".join(([ids[i]] if ids is not None else []) + cells))
    path.write_text("\n".join(lines) + "\n")
    return path


BAD_ROWS = {
    3: ("f1", "abc", "column 'f1' is not a number: 'abc'"),
    8: ("f3", "", "column 'f3' is missing or empty"),
    15: ("amount", "inf", "column 'amount' is inf (NaN/inf not allowed)"),
}


def test_records_score_like_anomaly_score_and_bad_rows_go_to_errors(spark, tmp_path, tiny_bundle):
    from click.testing import CliRunner

    from anomaly.cli import main
    from testsupport.data import FEATURES, make_tabular_data

    normal, anomalies = make_tabular_data(150, 30, seed=4)
    rows = np.concatenate([normal, anomalies])
    rows[:, 4] = np.abs(rows[:, 4]) * 100
    source = _records_csv(tmp_path / "mixed.csv", rows)
    lines = source.read_text().splitlines()
    for row_no, (column, value, _) in BAD_ROWS.items():
        cells = lines[row_no].split(",")
        cells[FEATURES.index(column)] = value
        lines[row_no] = ",".join(cells)
    source.write_text("\n".join(lines) + "\n")

    out = tmp_path / "scores.parquet"
    result = CliRunner().invoke(
        main,
        ["spark-score", "--bundle", str(tiny_bundle), str(source), "--out", str(out)],
        catch_exceptions=False,
    )
    # bad rows make the run exit 1, like score-images with unreadable files
    assert result.exit_code == 1, result.output
    assert "180 records: 177 scored, 3 errors" in result.output

    errors = pd.read_parquet(tmp_path / "scores.parquet-errors").sort_values(
        "id", key=lambda s: s.astype(int)
    )
    assert list(errors["id"]) == [str(r) for r in BAD_ROWS]
    assert list(errors["reason"]) == [reason for _, _, reason in BAD_ROWS.values()]

    # `anomaly score` on the good rows, with their row numbers as ids, is the reference
    good = [i for i in range(len(rows)) if i + 1 not in BAD_ROWS]
    clean = _records_csv(tmp_path / "clean.csv", rows[good], [str(i + 1) for i in good])
    reference_out = tmp_path / "reference.jsonl"
    result = CliRunner().invoke(
        main, ["score", "--bundle", str(tiny_bundle), str(clean), "--out", str(reference_out)]
    )
    assert result.exit_code == 0, result.output
    reference = pd.read_json(reference_out, lines=True, dtype={"id": str}).set_index("id")
    scored = pd.read_parquet(out).set_index("id").loc[reference.index]
    assert len(scored) + len(errors) == len(rows)
    assert list(scored.columns) == list(reference.columns)
    numeric = [c for c in reference.columns if c not in ("is_anomaly", "top_features")]
    assert np.abs(scored[numeric].to_numpy() - reference[numeric].to_numpy()).max() <= 1e-5
    assert (scored["is_anomaly"] == reference["is_anomaly"]).all()
    assert scored["is_anomaly"].sum() > 0
    for ours, theirs in zip(scored["top_features"], reference["top_features"], strict=True):
        assert [t["feature"] for t in ours] == [t["feature"] for t in theirs]
        np.testing.assert_allclose(
            [t["contribution"] for t in ours], [t["contribution"] for t in theirs], atol=1e-5
        )


def test_parquet_with_an_id_column(spark, tmp_path, tiny_bundle):
    from anomaly.bundle.bundle import Bundle
    from anomaly.errors import AnomalyError
    from anomaly.spark.scoring import score_dataset
    from testsupport.data import FEATURES, make_tabular_data

    normal, _ = make_tabular_data(64, 0, seed=9)
    normal[:, 4] = np.abs(normal[:, 4]) * 100
    frame = pd.DataFrame(normal, columns=FEATURES)
    frame.insert(0, "record_id", [f"tx-{i}" for i in range(len(frame))])
    frame.loc[5, "f2"] = np.nan
    frame.to_parquet(tmp_path / "records.parquet")

    summary = score_dataset(spark, tiny_bundle, tmp_path / "records.parquet", tmp_path / "out")
    assert (summary.inputs, summary.scored, summary.errors) == (64, 63, 1)
    errors = pd.read_parquet(summary.errors_out)
    assert errors.to_dict("records") == [
        {"id": "tx-5", "reason": "column 'f2' is missing or empty"}
    ]
    scored = pd.read_parquet(summary.out).set_index("id")
    keep = frame.drop(index=5)
    expected = Bundle.load(tiny_bundle).score_components(keep[FEATURES].to_numpy()).score
    got = scored.loc[keep["record_id"], "score"].to_numpy()
    assert np.abs(got - expected).max() <= 1e-5

    with pytest.raises(AnomalyError, match="already exists"):
        score_dataset(spark, tiny_bundle, tmp_path / "records.parquet", tmp_path / "out")


def test_missing_feature_column_is_one_clear_error(spark, tmp_path, tiny_bundle):
    from anomaly.errors import AnomalyError
    from anomaly.spark.scoring import score_dataset

    pd.DataFrame({"f0": [1.0], "f1": [2.0]}).to_parquet(tmp_path / "narrow.parquet")
    with pytest.raises(AnomalyError, match="missing column\\(s\\) f2, f3, amount"):
        score_dataset(spark, tiny_bundle, tmp_path / "narrow.parquet", tmp_path / "out")
    with pytest.raises(AnomalyError, match="no such file or folder"):
        score_dataset(spark, tiny_bundle, tmp_path / "absent.csv", tmp_path / "out")


@pytest.fixture(scope="module")
def image_bundle(tmp_path_factory):
    from anomaly.bundle.schema import Schema
    from anomaly.bundle.training import train_bundle
    from anomaly.imaging.readers import load_training_images
    from testsupport.images import normal_discs, write_png

    root = tmp_path_factory.mktemp("spark-images")
    for i, image in enumerate(normal_discs(96, 16, seed=1)):
        write_png(root / "train" / f"{i:03d}.png", image)
    X, options = load_training_images(root / "train", 16, 1)
    return train_bundle(
        X,
        root / "bundle",
        Schema.image(*X.shape[1:]),
        detector_params={"epochs": 1, "batch_size": 32, "filters": 8, "bank_rows": 64},
        image_preprocessing=options,
        target_fpr=0.05,
        seed=0,
    ).path


def test_images_score_like_score_images_and_unreadable_files_go_to_errors(
    spark, tmp_path, image_bundle
):
    from anomaly.bundle.bundle import Bundle
    from anomaly.imaging.readers import discover_files, iter_batches
    from anomaly.imaging.scoring import bundle_image_options
    from anomaly.spark.scoring import score_image_files
    from testsupport.images import (
        cross_image,
        normal_discs,
        write_png,
        write_truncated_png,
    )

    folder = tmp_path / "incoming"
    for i, image in enumerate(normal_discs(12, 20, seed=2)):  # 20x20: resized like training
        write_png(folder / "normal" / f"{i:02d}.png", image)
    write_png(folder / "odd" / "cross.png", cross_image(16))
    write_truncated_png(folder / "odd" / "truncated.png", cross_image(16))
    (folder / "odd" / "garbage.png").write_bytes(b"not a png at all")
    (folder / "README.txt").write_text("not an image")

    summary = score_image_files(spark, image_bundle, folder, tmp_path / "images.parquet")
    assert (summary.inputs, summary.scored, summary.errors, summary.skipped) == (16, 13, 2, 1)
    assert summary.inputs == summary.scored + summary.errors + summary.skipped

    errors = pd.read_parquet(summary.errors_out).sort_values("path")
    assert [Path(p.removeprefix("file:")).name for p in errors["path"]] == [
        "garbage.png",
        "truncated.png",
    ]
    assert set(errors["reason"]) <= {"unreadable", "truncated"} and errors["message"].all()

    # the single-process path of `anomaly score-images`: same readers, options and scoring
    bundle = Bundle.load(image_bundle)
    files = discover_files(folder)
    reference, failed = {}, []
    for batch in iter_batches(files, bundle_image_options(bundle), 64):
        failed += [Path(e.path).name for e in batch.errors]
        scores = bundle.score_components(batch.images).score if batch.metas else []
        reference.update({m.path: float(s) for m, s in zip(batch.metas, scores, strict=True)})
    assert sorted(failed) == ["garbage.png", "truncated.png"]

    scored = pd.read_parquet(summary.out)
    scored["local"] = [p.removeprefix("file:") for p in scored["path"]]
    assert sorted(scored["local"]) == sorted(reference)
    ours = scored.set_index("local").loc[list(reference), "score"].to_numpy()
    # float32 scores from other batch sizes: equal to float32 precision, relative to the score
    np.testing.assert_allclose(ours, np.array(list(reference.values())), rtol=1e-5, atol=1e-5)
    columns = ["path", "frame", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]
    assert list(scored.columns[:6]) == columns + ["score"]
    assert "is_anomaly" in scored.columns and "encoder_knn" in scored.columns
