"""Retraining from what the service saw: ``anomaly train --from-topic`` on a real broker."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from anomaly.bundle.bundle import Bundle
from anomaly.cli import main
from testsupport.data import FEATURES, make_tabular_data

SMALL = ("--epochs", "2", "--hidden", "16,8", "--quiet")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _record(row, record_id):
    return json.dumps({**dict(zip(FEATURES, row, strict=True)), "id": record_id}).encode()


@pytest.mark.kafka
def test_retrain_from_the_input_topic_with_verdicts_and_lineage(
    kafka_bootstrap, tiny_bundle, tmp_path
):
    from anomaly.topics import produce
    from testsupport.kafka import new_topics

    normal, anomalies = make_tabular_data(900, 30, seed=0)
    normal = normal[600:]  # rows the tiny bundle was not trained on
    for rows in (normal, anomalies):
        rows[:, 4] = abs(rows[:, 4]) * 100
    records = [(None, _record(r, f"r{i}")) for i, r in enumerate(normal.tolist())]
    records += [(None, _record(r, f"a{i}")) for i, r in enumerate(anomalies.tolist())]
    records += [
        (None, b"{not json"),
        (None, b'{"f0": 1}'),
        (None, _record([1] * 5, "x")[:-1] + b', "extra": 2}'),
    ]
    topic = new_topics(kafka_bootstrap, partitions=1)["input_topic"]
    produce(kafka_bootstrap, topic, records)
    verdicts = tmp_path / "verdicts.csv"
    with open(verdicts, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["alert_id", "record_id", "label"])
        writer.writerows([["", f"a{i}", "fraud"] for i in range(10)])
        # serve's alert ids are topic/partition/offset: a10 and a11 sit at offsets 310, 311
        writer.writerows([[f"{topic}/0/{300 + i}", "", "confirmed"] for i in (10, 11)])
        writer.writerow(["", "r5", "normal"])

    out = tmp_path / "retrained"
    retrain = ("train", "--from-topic", topic, "--parent", tiny_bundle)
    retrain += ("--bootstrap-servers", kafka_bootstrap)
    result = run(
        *retrain,
        "--labels",
        verdicts,
        "--out",
        out,
        *SMALL,
    )
    assert result.exit_code == 0, result.output
    parent = Bundle.load(tiny_bundle, model=False)
    training = json.loads((out / "manifest.json").read_text())["training"]
    lineage = training["lineage"]
    assert lineage["parent"]["version"] == parent.model_version
    assert lineage["topic"] == topic and lineage["offsets"] == {"0": [0, 332]}
    assert lineage["records_read"] == 333 and sum(lineage["undecodable"].values()) == 3
    assert lineage["verdicts"] == {"anomalies": 12, "normals": 1, "given": 13}
    assert training["labels"]["anomalies"] == 12 and training["labels"]["learned"]
    # the 18 unconfirmed anomalies sit far above the live threshold: none is taken for normal
    assert lineage["above_threshold_left_out"] >= 18
    n_normal = training["n_train"] + training["n_validation"] + training["n_calibration"]
    assert n_normal == 330 - 12 - lineage["above_threshold_left_out"]
    assert "from topic" in result.output and "12 confirmed anomalies" in result.output
    info = run("info", "--bundle", out)
    assert f"parent {parent.model_name} {parent.model_version}" in info.output

    # --keep-alerts trains on the unconfirmed alerts too; --last reads the tail only
    kept = run(
        *retrain,
        "--keep-alerts",
        "--last",
        "100",
        "--out",
        tmp_path / "kept",
        *SMALL,
    )
    assert kept.exit_code == 0, kept.output
    lineage = json.loads((tmp_path / "kept" / "manifest.json").read_text())["training"]["lineage"]
    assert lineage["records_read"] == 100 and lineage["above_threshold_left_out"] == 0
    assert lineage["offsets"] == {"0": [233, 332]}


def test_retrain_refuses_what_does_not_fit_in_one_line(tiny_bundle, tmp_path):
    cases = [
        (("--from-topic", "t", "--bootstrap-servers", "localhost:1"), "needs --parent"),
        (("--from-topic", "t", "--parent", tiny_bundle), "needs --parent"),
        ((tmp_path / "x.csv", "--from-topic", "t"), "not both"),
        ((tmp_path / "x.csv", "--since", "1h"), "--since: only with --from-topic"),
        (
            (
                "--from-topic",
                "t",
                "--parent",
                tiny_bundle,
                "--bootstrap-servers",
                "h:1",
                "--holdout",
                tmp_path / "h.csv",
            ),
            "--holdout: not with --from-topic",
        ),
        ((), "give DATA, or --from-topic"),
    ]
    (tmp_path / "x.csv").write_text("f0\n1\n")
    for args, message in cases:
        result = run("train", *args, "--out", tmp_path / "never", *SMALL)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output
        assert not (tmp_path / "never").exists()
