"""Threshold refits from published scores (a file or the serve scores topic), analyst
feedback, the change guard, rollback and history, end to end through the CLI."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest
from click.testing import CliRunner

from anomaly.bundle.bundle import MANIFEST, Bundle
from anomaly.cli import main
from anomaly.errors import AnomalyError
from anomaly.stream.alerts import AlertBuilder, Source, encode
from testsupport.data import FEATURES, make_tabular_data, unique_name


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
    scores = bundle.score_components(X).score
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


class ServiceThread:
    """``anomaly serve``'s loop in a thread, with a real /metrics server on a free port."""

    def __init__(self, config, bundle):
        from anomaly.stream.metrics import Metrics, MetricsServer
        from anomaly.stream.service import StreamService

        self.metrics = Metrics()
        self.server = MetricsServer(self.metrics, "127.0.0.1", 0).start()
        self.service = StreamService(config, bundle, self.metrics)
        self.status = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.status = self.service.run()

    def stop(self):
        self.service.stop()
        self.thread.join(30)
        self.server.stop()
        return self.status


@pytest.mark.kafka
def test_refit_from_the_live_scores_topic_and_a_rollback_picked_up_by_serve(
    kafka_bootstrap, bundle_copy, tmp_path
):
    from anomaly.stream.config import load_serve_config
    from anomaly.topics import produce
    from testsupport.kafka import new_topics, read_topic, scrape, wait_until

    topics = new_topics(kafka_bootstrap, partitions=2)
    config = load_serve_config(
        {
            **topics,
            "bundle": str(bundle_copy),
            "bootstrap_servers": kafka_bootstrap,
            "session_timeout_ms": 4000,
            "heartbeat_interval_ms": 500,
            "max_batch": 64,
            "commit_interval_ms": 200,
            "threshold_refresh_s": 0.3,
        },
        env={},
    )
    rows = held_out(300, 30)
    records = [
        (
            f"r{i}".encode(),
            json.dumps({**dict(zip(FEATURES, row, strict=True)), "id": f"r{i}"}).encode(),
        )
        for i, row in enumerate(rows.tolist())
    ]
    runner = ServiceThread(config, Bundle.load(bundle_copy))
    first = Bundle.load(bundle_copy).threshold
    try:
        produce(kafka_bootstrap, topics["input_topic"], records)
        assert wait_until(lambda: runner.service.records_consumed >= len(records), 60)
        published = read_topic(kafka_bootstrap, topics["scores_topic"], expect=len(records))
        assert len(published) == len(records)

        # the same scores in a file give the same refit as the topic
        scores_file = tmp_path / "scores.jsonl"
        scores_file.write_bytes(b"".join(m.value + b"\n" for m in published))
        topic_args = (
            "--from-topic",
            topics["scores_topic"],
            "--bootstrap-servers",
            kafka_bootstrap,
        )
        # --force: the guard refuses this fall on a window with anomalies; the tables compared
        # here are printed either way
        dry = ("threshold", "--bundle", bundle_copy, "--target-fpr", "0.05", "--dry-run", "--force")
        from_topic, from_file = run(*dry, *topic_args), run(*dry, "--scores", scores_file)
        assert from_topic.exit_code == 0 and from_file.exit_code == 0, from_topic.output
        assert f"scores: 330 from topic {topics['scores_topic']}" in from_topic.output
        assert from_topic.output.splitlines()[1:] == from_file.output.splitlines()[1:]
        last = run(*dry, *topic_args, "--last", "100")
        assert "scores: 100 from topic" in last.output

        # analyst feedback on a topic, keyed by alert_id, drives a precision refit
        feedback_topic = unique_name("feedback")
        labels = {f"r{i}": int(i >= 300) for i in range(len(rows))}
        verdicts = [json.loads(m.value) for m in published]
        produce(
            kafka_bootstrap,
            feedback_topic,
            [
                (
                    None,
                    json.dumps(
                        {"alert_id": v["alert_id"], "label": labels[v["record_id"]]}
                    ).encode(),
                )
                for v in verdicts
                if v["is_anomaly"] or int(v["record_id"][1:]) % 3 == 0
            ],
        )
        labelled = run(
            "threshold",
            "--bundle",
            bundle_copy,
            *topic_args,
            "--feedback-topic",
            feedback_topic,
            "--method",
            "precision",
            "--at-recall",
            "0.9",
            "--dry-run",
        )
        assert labelled.exit_code == 0, labelled.output
        assert "with analyst labels" in labelled.output and "recall" in labelled.output

        # a change that quadruples the alert rate is refused, then forced; serve picks it up
        loose = ("threshold", "--bundle", bundle_copy, *topic_args, "--target-fpr", "0.6")
        refused = run(*loose)
        assert refused.exit_code == 2 and "threshold unchanged" in refused.output
        assert Bundle.load(bundle_copy).threshold_version == 1
        forced = run(*loose, "--force")
        assert forced.exit_code == 0, forced.output
        assert wait_until(
            lambda: scrape(runner.server.url).get("anomaly_threshold_version{}") == 2, 10
        )
        assert scrape(runner.server.url)["anomaly_threshold{}"] < first

        # the rollback is picked up by the running serve too
        assert run("threshold", "--bundle", bundle_copy, "--rollback", "v1").exit_code == 0
        assert wait_until(
            lambda: scrape(runner.server.url).get("anomaly_threshold_version{}") == 3, 10
        )
        assert scrape(runner.server.url)["anomaly_threshold{}"] == pytest.approx(first)
    finally:
        assert runner.stop() == 0


def test_the_window_drops_replays_other_model_versions_and_old_scores():
    from anomaly.monitoring.scores import Feedback, build_window, parse_duration

    now = 1_700_000_000_000
    base = {"model": {"name": "m", "version": "v1"}}
    messages = [
        {
            **base,
            "alert_id": "t/0/1",
            "record_id": "a",
            "score": 1.0,
            "scored_timestamp_ms": now - 7_200_000,
        },
        {
            **base,
            "alert_id": "t/0/2",
            "record_id": "b",
            "score": 2.0,
            "scored_timestamp_ms": now - 60_000,
        },
        {
            **base,
            "alert_id": "t/0/2",
            "record_id": "b",
            "score": 2.0,
            "scored_timestamp_ms": now - 50_000,
        },
        {"model": {"version": "v0"}, "alert_id": "t/0/3", "score": 9.0, "scored_timestamp_ms": now},
        {
            **base,
            "alert_id": "t/0/4",
            "record_id": "c",
            "score": 3.0,
            "scored_timestamp_ms": now - 1_000,
        },
    ]
    feedback = Feedback(by_alert={"t/0/4": 1}, by_record={"b": 0})
    window = build_window(
        messages,
        "topic t",
        model_version="v1",
        feedback=feedback,
        since_s=parse_duration("1h"),
        now_ms=now,
    )
    assert window.scores.tolist() == [2.0, 3.0] and window.labels.tolist() == [0, 1]
    assert (window.duplicates, window.skipped_other_models) == (1, 1)
    last = build_window(messages, "topic t", model_version="v1", last=1)
    assert last.scores.tolist() == [3.0]
    with pytest.raises(AnomalyError, match="expected a number and a unit"):
        parse_duration("yesterday")


def test_anomaly_score_output_and_csv_feedback_keyed_by_record_id(bundle_copy, tmp_path):
    rows = held_out(200, 20)
    data = tmp_path / "rows.csv"
    data.write_text(
        "id,"
        + ",".join(FEATURES)
        + "\n"
        + "\n".join(f"r{i}," + ",".join(f"{v:.6f}" for v in row) for i, row in enumerate(rows))
    )
    scored = run("score", "--bundle", bundle_copy, data, "--out", tmp_path / "scores.csv")
    assert scored.exit_code == 0, scored.output
    feedback = tmp_path / "verdicts.csv"
    feedback.write_text(
        "record_id,label\n" + "".join(f"r{i},{int(i >= 200)}\n" for i in range(0, 220, 2))
    )
    result = run(
        "threshold",
        "--bundle",
        bundle_copy,
        "--scores",
        tmp_path / "scores.csv",
        "--feedback",
        feedback,
        "--method",
        "f1",
        "--dry-run",
    )
    assert result.exit_code == 0, result.output
    assert "scores: 220 from file" in result.output and "110 with analyst labels" in result.output
    assert "(10 labelled anomalies)" in result.output
