"""Alert and score messages: built from scored records, valid against the packaged JSON Schemas."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from anomaly.stream.alerts import AlertBuilder, Source, alert_id, encode, encode_key, load_schema

FEATURES = ["V1", "V2", "V3", "Amount"]


@pytest.fixture
def builder() -> AlertBuilder:
    return AlertBuilder("fraud", "abc123", FEATURES, alert_fields=["Amount"], top_features=2)


def validate(message: dict, name: str) -> dict:
    decoded = json.loads(encode(message))
    jsonschema.validate(decoded, load_schema(name), format_checker=jsonschema.FormatChecker())
    return decoded


def make_alert(builder: AlertBuilder, key: bytes | None = b"card-42") -> dict:
    source = Source("tx", 3, 1041, 1_700_000_000_123, key)
    return builder.alert(
        source,
        "tx-9",
        {"V1": 1.0, "V2": 2.0, "V3": 3.0, "Amount": 999.5, "id": "tx-9"},
        4.2,
        {"reconstruction": 0.7, "discriminator": 0.1, "latent": 0.05},
        np.array([0.1, 2.5, 0.3, 1.7], dtype=np.float32),
        3.0,
        2,
        1_700_000_000_200,
    )


def test_alert_is_valid_and_complete(builder):
    alert = validate(make_alert(builder), "alert")
    assert alert["alert_id"] == "tx/3/1041"
    assert alert["source"] == {"topic": "tx", "partition": 3, "offset": 1041}
    assert alert["key"] == "card-42" and alert["key_encoding"] == "utf-8"
    assert alert["record_id"] == "tx-9"
    assert alert["event_time"] == "2023-11-14T22:13:20.123+00:00"
    assert alert["score"] == 4.2 and alert["threshold"] == 3.0 and alert["threshold_version"] == 2
    assert alert["components"] == {"reconstruction": 0.7, "discriminator": 0.1, "latent": 0.05}
    assert alert["model"] == {"name": "fraud", "version": "abc123"}
    assert [f["feature"] for f in alert["top_features"]] == ["V2", "Amount"]
    assert alert["top_features"][0]["contribution"] == pytest.approx(2.5)


def test_alert_copies_only_allow_listed_fields(builder):
    alert = validate(make_alert(builder), "alert")
    assert alert["fields"] == {"Amount": 999.5}
    bare = AlertBuilder("fraud", "abc123", FEATURES)
    alert = validate(make_alert(bare), "alert")
    assert alert["fields"] == {}
    assert "999.5" not in encode(alert).decode()


def test_binary_and_missing_keys(builder):
    alert = validate(make_alert(builder, key=b"\xff\x00\x01"), "alert")
    assert alert["key_encoding"] == "base64" and alert["key"] == "/wAB"
    alert = validate(make_alert(builder, key=None), "alert")
    assert alert["key"] is None and alert["key_encoding"] is None
    assert encode_key(b"abc") == ("abc", "utf-8")


def test_score_message_is_valid(builder):
    source = Source("tx", 0, 5, None, None)
    message = builder.score_message(
        source, None, 0.5, {"reconstruction": 0.5, "discriminator": 0.2}, 3.0, 1, 1
    )
    decoded = validate(message, "score")
    assert decoded["is_anomaly"] is False and decoded["event_time"] is None
    assert alert_id(source) == "tx/0/5"


def test_schema_rejects_a_leaky_or_broken_alert(builder):
    alert = json.loads(encode(make_alert(builder)))
    schema = load_schema("alert")
    leaky = {**alert, "card_number": "4111111111111111"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(leaky, schema)
    broken = {**alert, "source": {"topic": "tx", "partition": -1, "offset": 1}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    nested = {**alert, "fields": {"Amount": {"raw": 1}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(nested, schema)


def test_schemas_are_valid_draft_2020_12():
    for name in ("alert", "score"):
        jsonschema.Draft202012Validator.check_schema(load_schema(name))
