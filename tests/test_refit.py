"""Threshold refits from published scores (a file or the serve scores topic), analyst
feedback, the change guard, rollback and history, end to end through the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from anomaly.cli import main
from anomaly.model.bundle import MANIFEST, Bundle
from anomaly.stream.alerts import AlertBuilder, Source, encode
from anomaly.testing.data import FEATURES, make_tabular_data


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    path = tmp_path / "b"
    shutil.copytree(tiny_bundle, path)
    return path


def held_out(n_normal=400, n_anomalies=40):
    """Normal rows from the tiny bundle's distribution that it was not trained on, and anomalies."""
    normal, anomalies = make_tabular_data(600 + n_normal, n_anomalies, seed=0)
    normal = normal[600:]  # the first 600 are the training rows (same generator stream)
    normal[:, 4] = abs(normal[:, 4]) * 100
    anomalies[:, 4] = abs(anomalies[:, 4]) * 100
    return np.concatenate([normal, anomalies])


def score_messages(bundle_dir, topic="transactions", n_normal=400, n_anomalies=40):
    """Score messages exactly as serve publishes them, for held-out normal + anomalous rows."""
    bundle = Bundle.load(bundle_dir)
    X = held_out(n_normal, n_anomalies)
    scores = bundle.score(X).score
    builder = AlertBuilder(bundle.model_name, bundle.model_version, FEATURES)
    messages = []
    for i, score in enumerate(scores):
        source = Source(topic, i % 2, i // 2, 1_700_000_000_000 + i, f"k{i}".encode())
        messages.append(
            builder.score_message(
                source, f"r{i}", float(score), {}, bundle.threshold, 1, 1_700_000_000_000 + i
            )
        )
    labels = np.r_[np.zeros(n_normal, int), np.ones(n_anomalies, int)]
    return messages, labels


def write_jsonl(path, messages):
    path.write_bytes(b"".join(encode(m) + b"\n" for m in messages))
    return path


def history(bundle_dir):
    return json.loads((bundle_dir / MANIFEST).read_text())["thresholds"]


def test_guarded_change_is_refused_without_force_and_applied_with_it(bundle_copy, tmp_path):
    messages, _ = score_messages(bundle_copy)
    scores_file = write_jsonl(tmp_path / "scores.jsonl", messages)
    args = ("threshold", "--bundle", bundle_copy, "--scores", scores_file)
    refused = run(*args, "--method", "quantile", "--target-fpr", "0.6")
    assert refused.exit_code == 2
    assert "alert rate" in refused.output and "v1 (live)" in refused.output
    assert "threshold unchanged: the alert rate on this data would rise" in refused.output
    assert len(history(bundle_copy)) == 1
    forced = run(*args, "--method", "quantile", "--target-fpr", "0.6", "--force")
    assert forced.exit_code == 0, forced.output
    assert "forced:" in forced.output and "threshold version 2 written" in forced.output
    entry = history(bundle_copy)[-1]
    assert entry["source"] == f"file {scores_file}" and entry["implied"]["n"] == 440
    within = run(*args, "--method", "quantile", "--target-fpr", "0.4")
    assert within.exit_code == 0 and "threshold version 3 written" in within.output


def test_rollback_and_history_table(bundle_copy, tmp_path):
    first = Bundle.load(bundle_copy).threshold
    messages, _ = score_messages(bundle_copy)
    scores_file = write_jsonl(tmp_path / "scores.jsonl", messages)
    refit = run(
        "threshold",
        "--bundle",
        bundle_copy,
        "--scores",
        scores_file,
        "--force",
        "--target-fpr",
        "0.3",
    )
    assert refit.exit_code == 0, refit.output
    rolled = run("threshold", "--bundle", bundle_copy, "--rollback", "v1")
    assert rolled.exit_code == 0 and "version 3 (rollback to v1 (quantile))" in rolled.output
    assert Bundle.load(bundle_copy).threshold == first
    table = run("threshold", "--bundle", bundle_copy, "--history")
    lines = table.output.splitlines()
    assert [line.split()[0] for line in lines] == ["version", "v1", "v2", "v3"]
    assert "rollback" in lines[3] and lines[3].endswith("(live)")
    bad = run("threshold", "--bundle", bundle_copy, "--rollback", "v9")
    assert bad.exit_code == 2 and "no threshold v9" in bad.output


def test_feedback_labels_drive_an_f1_refit(bundle_copy, tmp_path):
    messages, labels = score_messages(bundle_copy)
    scores_file = write_jsonl(tmp_path / "scores.jsonl", messages)
    # analysts label what they looked at: every alert, plus a sample of the rest
    looked = [i for i, m in enumerate(messages) if m["is_anomaly"] or i % 4 == 0]
    feedback = tmp_path / "feedback.jsonl"
    feedback.write_text(
        "".join(
            json.dumps(
                {"alert_id": messages[i]["alert_id"], "label": ["normal", "fraud"][labels[i]]}
            )
            + "\n"
            for i in looked
        )
    )
    args = ("threshold", "--bundle", bundle_copy, "--scores", scores_file, "--method", "f1")
    missing = run(*args)
    assert missing.exit_code == 2 and "needs analyst labels" in missing.output
    result = run(*args, "--feedback", feedback, "--force")
    assert result.exit_code == 0, result.output
    assert f"{len(looked)} with analyst labels" in result.output
    entry = history(bundle_copy)[-1]
    assert entry["method"] == "f1" and entry["implied"]["n_anomalies"] == 40
    assert entry["implied"]["recall"] > 0.8 and entry["implied"]["n"] == 440
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"alert_id": "x", "label": "maybe"}\n')
    refused = run(*args, "--feedback", bad)
    assert refused.exit_code == 2 and "bad.jsonl, row 1: label 'maybe'" in refused.output
