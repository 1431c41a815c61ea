"""The output producer choice (``producer_client``): confluent-kafka's (librdkafka, the
default) publishes what kafka-python's did, to the same partitions, and a delivery that
fails is never committed."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from anomaly.bundle.bundle import Bundle
from anomaly.demo.broker import create_topic, free_port
from anomaly.stream.checkpoint import ExitCode
from anomaly.stream.config import ConfigError, load_serve_config
from anomaly.stream.output import ConfluentOutput, Output
from anomaly.stream.service import StreamService
from anomaly.topics import produce
from tests.test_checkpoint import Running, config_for, records
from testsupport.kafka import committed, new_topics, read_topic, wait_until

BASE = {"bundle": "b", "input_topic": "i", "alert_topic": "a", "dlq_topic": "d", "group": "g"}


def test_confluent_is_the_default_and_exactly_once_keeps_kafka_python():
    config = load_serve_config(BASE, env={})
    assert config.producer_client == "confluent" and config.confluent_producer
    assert not load_serve_config({**BASE, "exactly_once": True}, env={}).confluent_producer
    assert not load_serve_config(
        {**BASE, "producer_client": "kafka-python"}, env={}
    ).confluent_producer
    with pytest.raises(ConfigError, match="producer_client must be one of"):
        load_serve_config({**BASE, "producer_client": "librdkafka"}, env={})


def test_one_producer_table_configures_either_client():
    env = {
        "ANOMALY_PRODUCER__BATCH_SIZE": "16384",
        "ANOMALY_PRODUCER__DELIVERY_TIMEOUT_MS": "2500",
        "ANOMALY_PRODUCER__ENABLE_IDEMPOTENCE": "false",
        "ANOMALY_KAFKA__REQUEST_TIMEOUT_MS": "1500",
    }
    config = load_serve_config(
        {**BASE, "bootstrap_servers": "k1:9092,k2:9092", "producer": {"queue.buffering.max.ms": 7}},
        env=env,
    )
    settings = config.confluent_producer_settings()
    assert settings["bootstrap.servers"] == "k1:9092,k2:9092"
    assert settings["batch.size"] == 16384
    assert settings["delivery.timeout.ms"] == 2500
    assert settings["enable.idempotence"] is False
    assert settings["request.timeout.ms"] == 1500
    assert settings["acks"] == "all" and settings["linger.ms"] == 5
    assert settings["partitioner"] == "murmur2_random"  # kafka-python's key -> partition
    assert settings["queue.buffering.max.ms"] == 7  # librdkafka's own names pass as they are
    assert not any("_" in key for key in settings)  # nothing kafka-python-only slips through
    odd = load_serve_config({**BASE, "producer": {"partitioner": "x"}}, env={})
    with pytest.raises(ConfigError, match="partitioner have no confluent-kafka equivalent"):
        odd.confluent_producer_settings()


def _publish(bootstrap: str, bundle: Any, topics: dict[str, str], client: str, total: int):
    config = config_for(bootstrap, bundle, topics, producer_client=client)
    runner = Running(config, Bundle.load(bundle))
    output = runner.service.output
    assert type(output) is (ConfluentOutput if client == "confluent" else Output)
    try:
        assert wait_until(lambda: runner.service.records_consumed >= total, 60)
        assert wait_until(lambda: runner.service.uncommitted == 0, 20)
    finally:
        assert runner.stop() == ExitCode.OK
    published = {}
    for name in ("alert_topic", "scores_topic", "dlq_topic"):
        for message in read_topic(bootstrap, topics[name]):
            value = message.value
            if name != "dlq_topic":
                body = json.loads(value)
                # the scoring time differs between two runs (alerts also carry it as ISO 8601)
                assert body.pop("scored_timestamp_ms") > 0
                body.pop("scored_at", None)
                source = (body["source"]["partition"], body["source"]["offset"])
                value = body
            else:
                headers = dict(message.headers)
                source = tuple(
                    int(headers[f"__connect.errors.{h}"]) for h in ("partition", "offset")
                )
            published[(name, source)] = (message.partition, message.key, value, message.headers)
    return published


def test_both_producers_publish_the_same_messages_to_the_same_partitions(
    kafka_bootstrap, tiny_bundle
):
    """Same keys, values (but the scoring time; dead letters byte for byte), headers and
    output partitions: librdkafka partitions keyed records with kafka-python's murmur2, not
    its own CRC32 default."""
    topics = new_topics(kafka_bootstrap, partitions=2)
    items = records(300, seed=5) + [(b"bad-1", b"not json"), (b"bad-2", b"[1, 2]")]
    total = produce(kafka_bootstrap, topics["input_topic"], items)
    runs = {}
    for client in ("kafka-python", "confluent"):
        outputs = {
            **topics,
            **{n: f"{topics[n]}-{client}" for n in ("alert_topic", "scores_topic", "dlq_topic")},
            "group": f"{topics['group']}-{client}",
        }
        for name in ("alert_topic", "scores_topic", "dlq_topic"):
            create_topic(kafka_bootstrap, outputs[name], partitions=3)
        runs[client] = _publish(kafka_bootstrap, tiny_bundle, outputs, client, total)
    kafka_python, confluent = runs["kafka-python"], runs["confluent"]
    assert sum(1 for name, _ in confluent if name == "scores_topic") == total - 2
    assert sum(1 for name, _ in confluent if name == "dlq_topic") == 2
    assert any(name == "alert_topic" for name, _ in confluent)
    assert len({partition for partition, *_ in confluent.values()}) == 3
    assert confluent.keys() == kafka_python.keys()
    for where, (partition, key, value, headers) in confluent.items():
        theirs = kafka_python[where]
        assert (partition, key, headers) == (theirs[0], theirs[1], theirs[3]), where
        assert _same(value, theirs[2]), where


def _same(ours: Any, theirs: Any) -> bool:
    """Equal, floats within 1e-5: two runs over the same records once differed in the last
    digits of one record's score (its alert and score message both), out of ~490 messages;
    the values are encoded before either producer gets them."""
    if isinstance(ours, dict):
        return ours.keys() == theirs.keys() and all(_same(ours[k], theirs[k]) for k in ours)
    if isinstance(ours, list):
        return len(ours) == len(theirs) and all(map(_same, ours, theirs))
    if isinstance(ours, float):
        return math.isclose(ours, theirs, rel_tol=1e-5, abs_tol=1e-9)
    return ours == theirs


def test_an_undeliverable_output_is_never_committed(kafka_bootstrap, tiny_bundle):
    """The outputs' broker does not answer: librdkafka fails each record's delivery after
    its delivery timeout, the checkpoint sees it, rewinds instead of committing, and the
    retry budget ends the service (exit 3) with nothing committed."""
    topics = new_topics(kafka_bootstrap, partitions=1)
    total = produce(kafka_bootstrap, topics["input_topic"], records(50, seed=6))
    config = load_serve_config(
        {
            **topics,
            "bundle": str(tiny_bundle),
            "bootstrap_servers": kafka_bootstrap,
            "session_timeout_ms": 4000,
            "heartbeat_interval_ms": 500,
            "max_batch": 64,
            "commit_interval_ms": 200,
            "delivery_timeout_s": 1,
            "max_delivery_failures": 2,
            "scores_topic": topics["scores_topic"],
        },
        env={
            "ANOMALY_PRODUCER__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
            "ANOMALY_PRODUCER__DELIVERY_TIMEOUT_MS": "1500",
            "ANOMALY_PRODUCER__REQUEST_TIMEOUT_MS": "1000",
        },
    )
    service = StreamService(config, Bundle.load(tiny_bundle))
    assert service.run() == ExitCode.GAVE_UP
    assert service.records_consumed >= 2 * total  # read, rewound, read again
    assert committed(kafka_bootstrap, topics["group"], topics["input_topic"], 1) == {0: None}
