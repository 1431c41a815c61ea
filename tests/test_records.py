"""The record decoder: valid records become rows, every kind of bad input a typed RecordError."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anomaly.errors import RecordError
from anomaly.stream import records
from anomaly.stream.records import RecordDecoder, nesting_depth

NAMES = ["V1", "V2", "Amount"]


@pytest.fixture
def decoder() -> RecordDecoder:
    return RecordDecoder(NAMES, extra_fields=["merchant"], max_bytes=512)


def body(**overrides: object) -> bytes:
    record: dict[str, object] = {"V1": 0.5, "V2": -1, "Amount": 12.25, "id": "tx-1"}
    record.update(overrides)
    return json.dumps({k: v for k, v in record.items() if v is not ...}).encode()


def reason_of(decoder: RecordDecoder, value: bytes | None) -> str:
    with pytest.raises(RecordError) as info:
        decoder.decode(value)
    assert info.value.reason in records.REASONS
    assert str(info.value)
    return info.value.reason


def test_valid_record_gives_row_in_schema_order(decoder):
    value = json.dumps({"Amount": 3.5, "id": 7, "V2": 2, "V1": -0.25}).encode()
    decoded = decoder.decode(value)
    assert decoded.row == [-0.25, 2, 3.5]
    assert decoded.record_id == 7
    assert decoded.fields["Amount"] == 3.5


def test_id_and_allowed_extra_fields_are_optional(decoder):
    decoded = decoder.decode(body(id=..., merchant="shop-9"))
    assert decoded.record_id is None
    assert decoded.fields["merchant"] == "shop-9"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "empty"),
        (b"", "empty"),
        (b"\xff\xfe\x00garbage", "undecodable"),
        (b'{"V1": 1, "V2": 2, "Amount": 3', "undecodable"),
        (b"[1, 2, 3]", "not_object"),
        (b'"just a string"', "not_object"),
        (body(V2=...), "missing_field"),
        (body(card_number="4111111111111111"), "extra_field"),
        (body(V1="0.5"), "wrong_type"),
        (body(V1=True), "wrong_type"),
        (body(V1=None), "wrong_type"),
        (body(V1=[1.0]), "wrong_type"),
        (body(id=1.5), "wrong_type"),
        (body(id="x" * 300), "wrong_type"),
        (body(merchant={"name": "x"}), "wrong_type"),
        (body(V1=float("nan")), "non_finite"),
        (body(V1=float("inf")), "non_finite"),
        (b'{"V1": -Infinity, "V2": 1, "Amount": 1}', "non_finite"),
        (b'{"V1": 1e999, "V2": 1, "Amount": 1}', "non_finite"),
        (b'{"V1": 1, "V2": 1, "Amount": 1, "pad": "' + b"x" * 600 + b'"}', "oversized"),
        (b"[" * 200 + b"]" * 200, "too_deep"),
        (b'{"V1": {"a": {"b": 1}}, "V2": 1, "Amount": 1}', "too_deep"),
    ],
)
def test_each_poison_kind_has_its_reason(decoder, value, reason):
    assert reason_of(decoder, value) == reason


def test_brackets_inside_strings_do_not_count_as_nesting(decoder):
    decoded = decoder.decode(body(id='a{[{"b": "}]', merchant="[[[{{{"))
    assert decoded.record_id == 'a{[{"b": "}]'


def test_deep_nesting_is_rejected_before_parsing():
    # 60k levels would blow the stdlib parser's recursion limit; the scan stops at the limit.
    value = b"[" * 60_000 + b"]" * 60_000
    decoder = RecordDecoder(NAMES, max_bytes=len(value))
    assert reason_of(decoder, value) == "too_deep"
    assert nesting_depth(value, 2) == 3


def test_schema_may_not_use_the_id_name():
    with pytest.raises(ValueError, match="id"):
        RecordDecoder(["id", "V1"])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=700))
def test_any_bytes_give_a_row_or_a_record_error(value):
    decoder = RecordDecoder(NAMES, max_bytes=512)
    try:
        decoded = decoder.decode(value)
    except RecordError as error:
        assert error.reason in records.REASONS
    else:
        assert len(decoded.row) == len(NAMES)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(NAMES + ["id", "x"]), json_values, max_size=5))
def test_any_json_object_gives_a_row_or_a_record_error(obj):
    decoder = RecordDecoder(NAMES, max_bytes=4096)
    value = json.dumps(obj).encode()
    try:
        decoded = decoder.decode(value)
    except RecordError as error:
        assert error.reason in records.REASONS
    else:
        assert all(type(v) in (int, float) for v in decoded.row)
        assert set(obj) <= set(NAMES) | {"id"}
