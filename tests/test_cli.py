"""The CLI end to end on real files: train, info, score, evaluate, threshold, bad input."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from anomaly.cli import main
from testsupport.data import FEATURES, make_tabular_data


def _write_csv(path, rows, labels=None, extra=None):
    header = ["id", *FEATURES] + (["Class"] if labels is not None else []) + (extra or [])
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for i, row in enumerate(rows):
            values = [f"r{i}", *(f"{v:.6f}" for v in row)]
            if labels is not None:
                values.append(int(labels[i]))
            writer.writerow(values + ["x"] * len(extra or []))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    normal, anomalies = make_tabular_data(700, 70)
    rows = np.concatenate([normal, anomalies])
    labels = np.r_[np.zeros(len(normal)), np.ones(len(anomalies))]
    order = np.random.default_rng(0).permutation(len(rows))
    train_csv = _write_csv(tmp / "train.csv", rows[order], labels[order])
    return tmp, train_csv


@pytest.fixture(scope="module")
def trained(files):
    tmp, train_csv = files
    bundle = tmp / "bundle"
    result = CliRunner().invoke(
        main,
        [
            "train",
            str(train_csv),
            "--out",
            str(bundle),
            "--epochs",
            "3",
            "--hidden",
            "16,8",
            "--target-fpr",
            "0.05",
            "--quiet",
            "--log1p",
            "amount",
            "--scaler",
            "robust",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "wrote bundle" in result.output
    return bundle


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_train_uses_only_normal_rows_and_ignores_the_label(trained):
    manifest = json.loads((trained / "manifest.json").read_text())
    assert [f["name"] for f in manifest["schema"]["features"]] == FEATURES
    t = manifest["training"]
    assert t["n_train"] + t["n_validation"] + t["n_calibration"] == 700


def test_info_is_human_readable(trained):
    result = run("info", "--bundle", trained)
    assert result.exit_code == 0
    assert "ganomaly" in result.output and "5 features" in result.output
    assert "v1" in result.output and "quantile" in result.output
    assert "self-check   AUROC normal vs corrupted normal: encoder_knn=" in result.output
    assert "stability    " in result.output


def test_info_keeps_the_self_check_verdict_apart_from_training_stability(trained):
    """A component the self-check left out is named on the self-check line; the stability
    line only carries training events (collapse, non-finite losses)."""
    from anomaly.bundle.describe import describe_manifest

    manifest = json.loads((trained / "manifest.json").read_text())
    check = next(e for e in manifest["training"]["log"] if e.get("phase") == "self_check")
    check.update(events=["component_inverted"], left_out=["encoder_svm"])
    text = describe_manifest(manifest)
    assert "left out of the score (ranks corruptions below normals): encoder_svm" in text
    assert "component_inverted" not in text
    manifest["training"]["log"].append({"phase": "final_check", "events": ["non_finite_loss"]})
    stability = next(
        line for line in describe_manifest(manifest).splitlines() if line.startswith("stability")
    )
    assert "non_finite_loss" in stability and "component_inverted" not in stability


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_score_writes_components_and_top_features(trained, files, tmp_path, suffix):
    _, train_csv = files
    out = tmp_path / f"scores.{suffix}"
    result = run("score", "--bundle", trained, train_csv, "--out", out, "--top-k", "2")
    assert result.exit_code == 0, result.output
    if suffix == "csv":
        rows = list(csv.DictReader(open(out)))
        assert set(rows[0]) == {
            "id",
            "score",
            "reconstruction",
            "discriminator",
            "latent",
            "encoder_knn",
            "discriminator_knn",
            "encoder_svm",
            "label_head",  # the training file's labelled anomalies trained it
            "is_anomaly",
            "top_features",
        }
        assert rows[0]["top_features"].count(":") == 2
    else:
        rows = [json.loads(line) for line in open(out)]
        assert rows[0]["top_features"][0]["feature"] in FEATURES
    assert len(rows) == 770
    assert rows[0]["id"].startswith("r")


def test_evaluate_reports_metrics_and_plots(trained, files, tmp_path):
    _, train_csv = files
    report = tmp_path / "report.json"
    result = run(
        "evaluate",
        "--bundle",
        trained,
        train_csv,
        "--plots",
        tmp_path / "plots",
        "--json-out",
        report,
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(report.read_text())
    assert metrics["roc_auc"] > 0.9
    assert metrics["tp"] + metrics["fn"] == 70 and metrics["fp"] + metrics["tn"] == 700
    for name in ("roc.png", "pr.png", "score_histogram.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_threshold_dry_run_changes_nothing_then_refit_appends(trained, files):
    _, train_csv = files
    manifest = trained / "manifest.json"
    before = manifest.read_bytes()
    dry = run("threshold", "--bundle", trained, train_csv, "--method", "f1", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "recall" in dry.output and "dry run" in dry.output
    assert manifest.read_bytes() == before
    for args in (
        ["--method", "precision", "--at-recall", "0.9"],
        ["--method", "quantile", "--target-fpr", "0.005", "--label-column", "none", "--force"],
    ):
        assert run("threshold", "--bundle", trained, train_csv, *args).exit_code == 0
    history = json.loads(manifest.read_text())["thresholds"]
    assert [h["method"] for h in history[-2:]] == ["precision", "quantile"]
    assert history[-2]["implied"]["recall"] >= 0.9
    assert history[-1]["params"] == {"target_fpr": 0.005}


def test_missing_column_names_file_and_column(trained, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,f0,f1\n1,0.1,0.2\n")
    result = run("score", "--bundle", trained, bad, "--out", tmp_path / "o.csv")
    assert result.exit_code == 2
    assert "bad.csv" in result.output and "missing column(s) f2, f3, amount" in result.output


def test_unknown_score_weight_is_refused_before_training(files, tmp_path):
    _, train_csv = files
    out = tmp_path / "never"
    result = run("train", train_csv, "--out", out, "--score-weights", "latnet=1")
    assert result.exit_code == 2
    assert "unknown component 'latnet'" in result.output and not out.exists()


def test_image_score_weights_opt_into_the_rotation_head(tmp_path):
    """Image component names are accepted by --score-weights; a weight for the rotation
    component trains the discriminator's rotation head and lets it vote."""
    rng = np.random.default_rng(0)
    images = np.zeros((128, 32, 32), np.float32)
    for img in images:  # an upright shape: a bar above a stem
        top, left = rng.integers(3, 8), rng.integers(4, 12)
        img[top : top + 3, left : left + 16] = rng.uniform(0.6, 1.0)
        img[top + 8 : top + 20, left + 6 : left + 10] = rng.uniform(0.3, 0.6)
    np.savez(tmp_path / "train.npz", images=images)
    weights = "encoder_knn=1,discriminator_knn=1,discriminator_rotation=1"
    out = tmp_path / "bundle"
    options = ["--epochs", "3", "--batch-size", "32", "--filters", "8", "--latent-dim", "16"]
    result = run(
        "train",
        tmp_path / "train.npz",
        "--images",
        "--out",
        out,
        *options,
        "--quiet",
        "--score-weights",
        weights,
    )
    assert result.exit_code == 0, result.output
    score = json.loads((out / "manifest.json").read_text())["score"]
    assert "discriminator_rotation" in score["components"]
    assert score["weights"]["discriminator_rotation"] == 1.0


def test_nan_names_the_row(trained, tmp_path):
    bad = tmp_path / "nan.csv"
    bad.write_text("f0,f1,f2,f3,amount\n1,2,3,4,5\n1,2,nan,4,5\n")
    result = run("score", "--bundle", trained, bad, "--out", tmp_path / "o.csv")
    assert result.exit_code == 2
    assert "nan.csv, row 2: column 'f2' is nan" in result.output


def test_unreadable_file_and_bundle(trained, tmp_path):
    binary = tmp_path / "x.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert run("score", "--bundle", trained, binary, "--out", tmp_path / "o.csv").exit_code == 2
    result = run("info", "--bundle", tmp_path)
    assert result.exit_code == 2 and "not a model bundle" in result.output


def test_threshold_refit_for_an_image_bundle(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "normal"
    folder.mkdir()
    for i in range(120):
        pixels = (rng.uniform(0, 0.3, size=(16, 16)) * 255).astype("uint8")
        Image.fromarray(pixels).save(folder / f"img{i:03d}.png")
    bundle = tmp_path / "img-bundle"
    trained = run(
        "train",
        folder,
        "--images",
        "--out",
        bundle,
        "--epochs",
        "1",
        "--filters",
        "8",
        "--latent-dim",
        "8",
        "--quiet",
    )
    assert trained.exit_code == 0, trained.output
    refit = run("threshold", "--bundle", bundle, folder, "--target-fpr", "0.05", "--force")
    assert refit.exit_code == 0, refit.output
    history = json.loads((bundle / "manifest.json").read_text())["thresholds"]
    assert len(history) == 2 and history[-1]["data_fingerprint"].endswith(":n=120")
    assert history[-1]["implied"]["fpr"] <= 0.05
    labelled = run("threshold", "--bundle", bundle, folder, "--method", "f1")
    assert labelled.exit_code == 2 and "needs labelled data" in labelled.output
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    broken = run("threshold", "--bundle", bundle, folder)
    assert broken.exit_code == 2 and "broken.png" in broken.output


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".npz"])
def test_any_bytes_in_a_data_file_give_a_table_or_an_input_error(tmp_path, suffix):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from anomaly.errors import InputError
    from anomaly.tabular.readers import read_table

    seeds = {
        ".csv": b"id,f0,f1,Class\n1,0.5,2,0\n2,1e3,-1,1\n",
        ".jsonl": b'{"id": 1, "f0": 0.5, "f1": 2}\n{"id": 2, "f0": 1, "f1": -1}\n',
        ".npz": _npz_bytes(),
    }

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.one_of(
            st.binary(max_size=200),
            st.builds(
                _mutate, st.just(seeds[suffix]), st.integers(0, 10**6), st.binary(max_size=8)
            ),
        )
    )
    def check(payload):
        path = tmp_path / f"data{suffix}"
        path.write_bytes(payload)
        try:
            table = read_table(path)
        except InputError as error:
            assert str(error).startswith(str(path))
            return
        assert table.X.ndim == 2 and np.isfinite(table.X).all()
        assert len(table.ids) == len(table.X)

    check()


def _npz_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, X=np.arange(6.0).reshape(3, 2), y=np.array([0, 1, 0]))
    return buffer.getvalue()


def _mutate(seed: bytes, position: int, patch: bytes) -> bytes:
    at = position % (len(seed) + 1)
    return seed[:at] + patch + seed[at + len(patch) :]
