"""ServeConfig: file < ANOMALY_* env < flags; Kafka settings pass through; secrets stay hidden."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from anomaly.stream.config import ConfigError, Secret, load_serve_config

REQUIRED = {
    "bundle": "b",
    "input_topic": "in",
    "alert_topic": "al",
    "dlq_topic": "dl",
    "group": "g",
}


def test_precedence_flags_over_env_over_file(tmp_path):
    path = tmp_path / "serve.toml"
    path.write_text(
        'bundle = "/models/fraud"\ninput-topic = "file-in"\nalert_topic = "file-alerts"\n'
        'dlq_topic = "file-dlq"\ngroup = "file-group"\nmax_batch = 100\nmax_wait_ms = 20\n'
        '[producer]\ncompression_type = "gzip"\n'
    )
    env = {
        "ANOMALY_INPUT_TOPIC": "env-in",
        "ANOMALY_MAX_BATCH": "200",
        "ANOMALY_ALERT_FIELDS": "id, Amount",
    }
    config = load_serve_config({"max_batch": 300, "group": None}, env=env, config_file=path)
    assert str(config.bundle) == "/models/fraud"
    assert config.input_topic == "env-in"
    assert config.group == "file-group"
    assert config.max_batch == 300
    assert config.max_wait_ms == 20
    assert config.alert_fields == ("id", "Amount")
    assert config.producer_settings()["compression_type"] == "gzip"


def test_yaml_file_and_config_from_env_var(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text(
        "bundle: /b\ninput_topic: in\nalert_topic: al\ndlq_topic: dl\ngroup: g\n"
        "alert_fields: [Amount]\nkafka:\n  client_id: scorer-1\n"
    )
    config = load_serve_config({}, env={"ANOMALY_CONFIG": str(path)})
    assert config.alert_fields == ("Amount",)
    assert config.consumer_settings()["client_id"] == "scorer-1"
    assert config.producer_settings()["client_id"] == "scorer-1"


def test_kafka_settings_pass_through_from_env():
    env = {
        "ANOMALY_KAFKA__REQUEST_TIMEOUT_MS": "15000",
        "ANOMALY_CONSUMER__FETCH_MAX_BYTES": "1048576",
        "ANOMALY_SECURITY_PROTOCOL": "SASL_SSL",
        "ANOMALY_SASL_MECHANISM": "SCRAM-SHA-512",
        "ANOMALY_SASL_USERNAME": "svc",
    }
    config = load_serve_config(REQUIRED, env=env)
    consumer = config.consumer_settings()
    assert consumer["request_timeout_ms"] == 15000
    assert consumer["fetch_max_bytes"] == 1048576
    assert consumer["security_protocol"] == "SASL_SSL"
    assert consumer["sasl_mechanism"] == "SCRAM-SHA-512"
    assert consumer["enable_auto_commit"] is False
    assert "fetch_max_bytes" not in config.producer_settings()


def test_password_from_env_never_shows(caplog):
    secret = "hunter2-very-secret"
    config = load_serve_config(
        REQUIRED, env={"ANOMALY_SASL_PASSWORD": secret, "ANOMALY_KAFKA__SSL_PASSWORD": secret}
    )
    assert config.consumer_settings()["sasl_plain_password"] == secret
    assert config.producer_settings()["ssl_password"] == secret
    with caplog.at_level(logging.INFO):
        logging.getLogger("anomaly.test").info("config %s %r", config, config)
    assert secret not in caplog.text and secret not in repr(config) and secret not in str(config)
    assert "***" in repr(config)
    assert repr(Secret(secret)) == "Secret('***')"


def test_password_from_file(tmp_path):
    path = tmp_path / "password"
    path.write_text("s3cret\n")
    config = load_serve_config({**REQUIRED, "sasl_password_file": str(path)}, env={})
    assert config.client_settings()["sasl_plain_password"] == "s3cret"
    assert "s3cret" not in repr(config)


def test_password_flag_is_refused():
    with pytest.raises(ConfigError, match="ANOMALY_SASL_PASSWORD"):
        load_serve_config({**REQUIRED, "sasl_password": "x"}, env={})


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"input_topic": "in"}, "--bundle"),
        ({**REQUIRED, "max_batch": 0}, "max_batch"),
        ({**REQUIRED, "log_format": "xml"}, "log_format"),
        ({**REQUIRED, "dlq_topic": "in"}, "differ"),
        ({**REQUIRED, "max_batch": "lots"}, "max_batch"),
    ],
)
def test_invalid_settings_are_named(flags, message):
    with pytest.raises(ConfigError, match=message):
        load_serve_config(flags, env={})


def test_unknown_file_setting_is_an_error(tmp_path):
    path = tmp_path / "serve.toml"
    path.write_text('bundel = "typo"\n')
    with pytest.raises(ConfigError, match="bundel"):
        load_serve_config(REQUIRED, env={}, config_file=path)


def test_the_config_file_example_in_the_docs_loads(tmp_path):
    """docs/streaming.md's serve.toml is a real configuration (a flag overrides the password
    file, which only exists on the documented machine)."""
    doc = (Path(__file__).parents[1] / "docs" / "streaming.md").read_text()
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "serve.toml"
    path.write_text(example)
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    config = load_serve_config({"sasl_password_file": str(secret)}, env={}, config_file=path)
    assert config.input_topic == "transactions" and config.exactly_once
    assert config.alert_fields == ("merchant_id", "card_id")
    producer = config.producer_settings()  # the measured defaults: no compression, 512 KiB
    assert producer.get("compression_type") is None and producer["batch_size"] == 512 * 1024
    assert config.client_settings()["sasl_plain_password"] == "s3cret"
