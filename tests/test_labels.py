"""Learning from labelled anomalies: GANomaly's label head, in the detector and through the CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from anomaly.cli import main
from detectors import AnoGAN, GANomaly
from detectors.ganomaly import LABEL_HEAD

TINY = {"epochs": 4, "batch_size": 64, "hidden": (16, 8), "seed": 0}
BANKS = ("encoder_knn", "discriminator_knn")


def _subtle_anomalies(rng: np.random.Generator, n: int) -> np.ndarray:
    """A fraud pattern the banks barely see: a modest shift along two of eight features."""
    rows = rng.normal(size=(n, 8))
    rows[:, :2] += 1.6
    return rows.astype("float32")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(900, 8)).astype("float32")
    return normal[:700], normal[700:], _subtle_anomalies(rng, 12), _subtle_anomalies(rng, 150)


@pytest.fixture(scope="module")
def labelled(data):
    train, _, known, _ = data
    y = np.r_[np.zeros(len(train)), np.ones(len(known))]
    return GANomaly(**TINY).fit(np.concatenate([train, known]), y=y)


@pytest.fixture(scope="module")
def unlabelled(data):
    return GANomaly(**TINY).fit(data[0])


def test_labels_lift_the_known_pattern_and_leave_the_banks_as_they_were(labelled, unlabelled, data):
    _, test_normal, _, new_cases = data
    X = np.concatenate([test_normal, new_cases])
    y = np.r_[np.zeros(len(test_normal)), np.ones(len(new_cases))]
    with_labels, without = labelled.score_components(X), unlabelled.score_components(X)
    assert labelled.component_names()[-1] == LABEL_HEAD
    assert roc_auc_score(y, with_labels.score) > roc_auc_score(y, without.score) + 0.05
    # the anomalies never reach the networks or the banks: every unsupervised component is
    # what a fit without them gives
    for name in (*BANKS, "reconstruction", "latent"):
        np.testing.assert_allclose(with_labels.component(name), without.component(name), rtol=1e-4)


def test_label_head_votes_one_sided_beside_the_banks(labelled, data):
    _, test_normal, _, new_cases = data
    comps = labelled.score_components(np.concatenate([test_normal, new_cases]))
    norm = labelled.normaliser_
    assert {n for n, w in norm.weights.items() if w} == {*BANKS, LABEL_HEAD}
    assert norm.one_sided == [LABEL_HEAD]
    z = norm.normalised(comps.raw())
    assert z[LABEL_HEAD].min() == 0.0  # it only ever raises a score
    expected = (z["encoder_knn"] + z["discriminator_knn"] + z[LABEL_HEAD]) / 3
    np.testing.assert_allclose(comps.score, expected, rtol=1e-4, atol=1e-5)
    # the self-check judges unsupervised components only; the head keeps its vote
    check = next(e for e in labelled.training_log_ if e.get("phase") == "self_check")
    assert LABEL_HEAD not in check["left_out"]
    head = next(e for e in labelled.training_log_ if e.get("phase") == "label_head")
    assert head["anomalies"] == 12


def test_label_head_round_trips(labelled, data, tmp_path):
    _, test_normal, _, new_cases = data
    X = np.concatenate([test_normal[:50], new_cases[:50]])
    labelled.save(tmp_path)
    assert (tmp_path / "label_head.keras").is_file()
    state = json.loads((tmp_path / "detector.json").read_text())
    loaded = GANomaly.load(tmp_path, state)
    np.testing.assert_allclose(
        loaded.decision_function(X), labelled.decision_function(X), rtol=1e-5, atol=1e-6
    )


def test_bad_labels_are_refused(data):
    train = data[0]
    with pytest.raises(ValueError, match="labels for"):
        GANomaly(**TINY).fit(train, y=np.zeros(3))
    with pytest.raises(ValueError, match="must hold 1"):
        GANomaly(**TINY).fit(train, y=np.full(len(train), 2))
    with pytest.raises(ValueError, match="does not learn from labelled anomalies"):
        AnoGAN(epochs=1, hidden=(8,), seed=0).fit(train, y=np.r_[np.zeros(len(train) - 1), 1])


FEATURES = [f"f{i}" for i in range(8)]


def _write(path, rows, labels=None, ids=True):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            (["id"] if ids else []) + FEATURES + (["Class"] if labels is not None else [])
        )
        for i, row in enumerate(rows):
            cells = ([f"r{i}"] if ids else []) + [f"{v:.6f}" for v in row]
            writer.writerow(cells + ([int(labels[i])] if labels is not None else []))
    return path


def _train(*args):
    base = ["train", *args, "--epochs", "2", "--hidden", "16,8", "--quiet"]
    return CliRunner().invoke(main, base)


def test_cli_learns_from_verdicts_joined_by_record_id(data, tmp_path):
    train, _, known, _ = data
    rows = np.concatenate([train, known])
    data_csv = _write(tmp_path / "data.csv", rows)
    fraud_ids = [f"r{len(train) + i}" for i in range(len(known))]
    verdicts = tmp_path / "verdicts.csv"
    with open(verdicts, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["record_id", "label"])
        writer.writerows([[rid, "fraud"] for rid in fraud_ids])
        writer.writerows([["r3", "normal"], ["nope-1", "fraud"]])
    bundle = tmp_path / "b"
    result = _train(str(data_csv), "--out", str(bundle), "--labels", str(verdicts))
    assert result.exit_code == 0, result.output
    assert "learned from 12 labelled anomalies (verdicts" in result.output
    assert "1 of 14 verdict(s)" in result.output and "name no row" in result.output
    training = json.loads((bundle / "manifest.json").read_text())["training"]
    assert training["labels"] == {
        "anomalies": 12,
        "learned": True,
        "source": f"verdicts {verdicts}",
    }
    # labelled anomalies are in none of the three normal splits
    assert training["n_train"] + training["n_validation"] + training["n_calibration"] == 700
    info = CliRunner().invoke(main, ["info", "--bundle", str(bundle)])
    assert "12 labelled anomalies" in info.output and "learned by the label head" in info.output
    scored = tmp_path / "scores.csv"
    result = CliRunner().invoke(
        main, ["score", "--bundle", str(bundle), str(data_csv), "--out", str(scored)]
    )
    assert result.exit_code == 0, result.output
    with open(scored) as fh:
        header = next(csv.reader(fh))
    assert LABEL_HEAD in header


def test_cli_label_column_and_opting_out(data, tmp_path):
    train, _, known, _ = data
    rows = np.concatenate([train, known])
    labels = np.r_[np.zeros(len(train)), np.ones(len(known))]
    data_csv = _write(tmp_path / "data.csv", rows, labels)
    result = _train(str(data_csv), "--out", str(tmp_path / "off"), "--no-learn-from-labels")
    assert result.exit_code == 0, result.output
    assert "left 12 labelled anomalies out of training (--no-learn-from-labels)" in result.output
    manifest = json.loads((tmp_path / "off" / "manifest.json").read_text())
    assert LABEL_HEAD not in manifest["score"]["components"]
    result = _train(str(data_csv), "--out", str(tmp_path / "ano"), "--detector", "anogan")
    assert result.exit_code == 0, result.output
    assert "(this detector does not learn from them)" in result.output


def test_cli_refuses_verdicts_it_cannot_join(data, tmp_path):
    rows = data[0]
    no_ids = _write(tmp_path / "no_ids.csv", rows, ids=False)
    verdicts = tmp_path / "v.jsonl"
    verdicts.write_text(json.dumps({"record_id": "r1", "label": 1}) + "\n")
    result = _train(str(no_ids), "--out", str(tmp_path / "a"), "--labels", str(verdicts))
    assert result.exit_code == 2
    assert "no id column was found" in result.output and "Traceback" not in result.output
    with_ids = _write(tmp_path / "ids.csv", rows)
    verdicts.write_text(json.dumps({"record_id": "zzz", "label": 1}) + "\n")
    result = _train(str(with_ids), "--out", str(tmp_path / "b"), "--labels", str(verdicts))
    assert result.exit_code == 2 and "no verdict names a row" in result.output
    verdicts.write_text(json.dumps({"record_id": "r1", "label": "maybe"}) + "\n")
    result = _train(str(with_ids), "--out", str(tmp_path / "c"), "--labels", str(verdicts))
    assert result.exit_code == 2 and "is not 1/0" in result.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
