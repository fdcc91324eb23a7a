"""Unit tests for stream.core.validation: reason codes, field rules, normalisation."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import orjson
import pytest

from schemas import load_schema
from stream.core.validation import (
    MAX_EVENT_BYTES,
    MAX_PROPERTIES_BYTES,
    Rejection,
    check_event,
    normalize,
    parse_event,
)

RECEIVED = 1_714_564_900_000  # 2024-05-01T12:01:40Z
T0 = 1_714_564_800_000  # 2024-05-01T12:00:00Z
DROP = object()

CLICK: dict[str, Any] = {
    "event_id": "e-1",
    "type": "click",
    "event_time": T0,
    "anonymous_id": "dev-1",
    "campaign_id": "c-1",
}
VIEW: dict[str, Any] = {**CLICK, "type": "view"}
PURCHASE: dict[str, Any] = {
    "event_id": "o-1",
    "type": "purchase",
    "event_time": T0,
    "user_id": "u-1",
    "revenue": 49.9,
    "currency": "EUR",
}


def make(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """Copy of ``base`` with ``changes`` applied; a value of DROP removes the key."""
    event = dict(base)
    for key, value in changes.items():
        if value is DROP:
            event.pop(key, None)
        else:
            event[key] = value
    return event


def ok(obj: object, received: int = RECEIVED) -> dict[str, Any]:
    result = check_event(obj, received)
    assert isinstance(result, dict), result
    return result


def rejected(obj: object, reason: str = "schema") -> Rejection:
    result = check_event(obj, RECEIVED)
    assert isinstance(result, Rejection), result
    assert result.reason == reason, result
    assert ": " in result.detail, "detail should say what is wrong and what to do"
    return result


# --- reason codes -----------------------------------------------------------------------

DLQ_REASONS = set(load_schema("dlq")["properties"]["reason"]["enum"])


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "invalid_json"),
        (b"{", "invalid_json"),
        (b'{"event_id": "e-1",}', "invalid_json"),
        (b"NaN", "invalid_json"),
        (b"\xff\xfe{}", "invalid_json"),  # not UTF-8
        (b'{"event_id": "\xed\xa0\x80"}', "invalid_json"),  # UTF-8 encoded surrogate
        (b"{} {}", "invalid_json"),
        (b"[]", "not_object"),
        (b'[{"event_id": "e-1"}]', "not_object"),
        (b'"click"', "not_object"),
        (b"42", "not_object"),
        (b"null", "not_object"),
        (b"true", "not_object"),
        (b"{}", "schema"),
        (b'{"event_id": "e-1", "type": "hover"}', "schema"),
        (b"x" * (MAX_EVENT_BYTES + 1), "too_large"),  # checked before parsing
        (orjson.dumps({**CLICK, "properties": {"k": "v" * 5000}}), "too_large"),
    ],
)
def test_parse_event_reason_codes(raw: bytes, reason: str) -> None:
    result = parse_event(raw, RECEIVED)
    assert isinstance(result, Rejection)
    assert result.reason == reason
    assert result.reason in DLQ_REASONS
    assert result.detail


def test_parse_event_accepts_valid_bytes() -> None:
    result = parse_event(orjson.dumps(CLICK), RECEIVED)
    assert isinstance(result, dict)
    assert result["ts"] == T0


@pytest.mark.parametrize("raw_type", [bytes, bytearray, memoryview])
def test_parse_event_accepts_bytes_like(raw_type: type) -> None:
    assert isinstance(parse_event(raw_type(orjson.dumps(CLICK)), RECEIVED), dict)


def test_event_size_limit_is_inclusive() -> None:
    body = orjson.dumps(CLICK)
    at_limit = body[:-1] + b" " * (MAX_EVENT_BYTES - len(body)) + b"}"
    assert len(at_limit) == MAX_EVENT_BYTES
    assert isinstance(parse_event(at_limit, RECEIVED), dict)
    over = at_limit[:-1] + b" }"
    result = parse_event(over, RECEIVED)
    assert isinstance(result, Rejection)
    assert result.reason == "too_large"
    assert str(MAX_EVENT_BYTES + 1) in result.detail


def test_not_bytes_is_rejected_not_raised() -> None:
    result = parse_event(None, RECEIVED)  # type: ignore[arg-type]
    assert isinstance(result, Rejection)
    assert result.reason == "invalid_json"


@pytest.mark.parametrize("value", [[], [CLICK], "click", 1, 1.5, None, True])
def test_check_event_not_object(value: object) -> None:
    result = rejected(value, "not_object")
    assert "JSON object" in result.detail


def test_detail_format_matches_the_contract_example() -> None:
    result = rejected(make(CLICK, type="hover"))
    assert result.detail == (
        "data.type must be one of ['view', 'click', 'add_to_cart', 'purchase', 'identify']: "
        "send a supported event type"
    )


def test_rejection_is_frozen() -> None:
    rejection = Rejection("schema", "x: y")
    with pytest.raises(dataclasses.FrozenInstanceError):
        rejection.reason = "late"  # type: ignore[misc]


# --- required fields and field rules ----------------------------------------------------


@pytest.mark.parametrize(
    ("event", "mentions"),
    [
        ({}, "event_id"),
        (make(CLICK, event_id=DROP), "event_id"),
        (make(CLICK, type=DROP), "type"),
        (make(CLICK, event_time=DROP), "event_time"),
        (make(CLICK, event_id=DROP, anonymous_id=DROP), "event_id"),  # basics first
        (make(CLICK, anonymous_id=DROP), "anonymous_id"),
        (make(VIEW, campaign_id=DROP), "campaign_id"),
        (make(CLICK, campaign_id=DROP), "campaign_id"),
        (make(PURCHASE, revenue=DROP), "revenue"),
        (make(PURCHASE, currency=DROP), "currency"),
        (make(PURCHASE, revenue=DROP, currency=DROP), "revenue"),
        (make(PURCHASE, user_id=DROP), "user_id"),
    ],
)
def test_missing_required_field(event: dict[str, Any], mentions: str) -> None:
    assert mentions in rejected(event).detail


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event_id", ""),
        ("event_id", "x" * 65),
        ("event_id", 17),
        ("type", "hover"),
        ("type", "CLICK"),
        ("type", None),
        ("event_time", "yesterday"),
        ("event_time", "2024-05-01"),
        ("event_time", "2024-05-01T12:00:00"),  # RFC 3339 needs an offset
        ("event_time", "2024-05-01 12:00:00Z"),
        ("event_time", "2024-02-30T12:00:00Z"),
        ("event_time", "0000-01-01T00:00:00Z"),  # passes the format regex, not a datetime
        ("event_time", -1),
        ("event_time", 253_402_300_800_000),  # after year 9999
        ("event_time", 1.5),
        ("event_time", True),
        ("event_time", None),
        ("event_time", [T0]),
        ("sent_at", "soon"),
        ("sent_at", -5),
        ("anonymous_id", ""),
        ("anonymous_id", "a" * 129),
        ("user_id", 42),
        ("campaign_id", ""),
        ("campaign_id", 7),
        ("variant_id", ""),
        ("variant_id", None),
        ("channel", "tv"),
        ("channel", "Web"),
        ("session_id", 1),
        ("order_id", ""),
        ("consent", True),
        ("consent", {"marketing": "yes"}),
        ("context", "web"),
        ("context", {"ip": 127}),
        ("context", {"utm": {"source": 1}}),
        ("context", {"utm": "source=x"}),
        ("properties", []),
        ("properties", "x"),
        ("received_at", "now"),
        ("received_at", -1),
        ("unknown_field", 1),
        ("ts", T0),  # computed by Pulse, not accepted from trackers
    ],
)
def test_invalid_field_value(field: str, value: Any) -> None:
    result = rejected(make(CLICK, **{field: value}))
    assert field in result.detail


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event_id", "x" * 64),
        ("event_id", "é"),
        ("anonymous_id", "a" * 128),
        ("user_id", "u-1"),
        ("variant_id", "B"),
        ("session_id", "s-1"),
        ("order_id", "o-1"),
        ("consent", {"marketing": True}),
        ("consent", {"marketing": False, "analytics": True}),
        ("consent", {}),
        (
            "context",
            {"ip": "203.0.113.9", "user_agent": "UA", "page_url": "https://x", "locale": "de"},
        ),
        ("context", {"utm": {"source": "newsletter", "campaign": "spring"}, "screen": [390, 844]}),
        ("properties", {}),
        ("properties", {"nested": {"list": [1, "two", None]}}),
        ("received_at", 0),
        ("event_time", 0),
        ("event_time", 253_402_300_799_999),
    ],
)
def test_valid_field_value(field: str, value: Any) -> None:
    ok(make(CLICK, **{field: value}))


@pytest.mark.parametrize(
    "channel", ["web", "mobile", "email", "sms", "social", "search", "display"]
)
def test_every_channel_is_accepted_and_kept(channel: str) -> None:
    assert ok(make(CLICK, channel=channel))["channel"] == channel


def test_identity_rules() -> None:
    ok(make(CLICK, anonymous_id=DROP, user_id="u-1"))
    ok(make(CLICK, user_id="u-1"))
    assert "user_id or anonymous_id" in rejected(make(CLICK, anonymous_id=DROP)).detail


# --- purchase rules --------------------------------------------------------------------


def test_purchase_needs_no_campaign() -> None:
    event = ok(PURCHASE)
    assert "campaign_id" not in event


@pytest.mark.parametrize("revenue", [0, 0.0, 1, 49.9, 10**9])
def test_purchase_revenue_accepted(revenue: float) -> None:
    assert ok(make(PURCHASE, revenue=revenue))["revenue"] == revenue


@pytest.mark.parametrize(
    "revenue", [-0.01, -1, "49.90", None, True, float("nan"), float("inf"), 10**400]
)
def test_purchase_revenue_rejected(revenue: Any) -> None:
    assert "revenue" in rejected(make(PURCHASE, revenue=revenue)).detail


@pytest.mark.parametrize(("currency", "expected"), [("EUR", "EUR"), ("usd", "USD"), ("gBp", "GBP")])
def test_currency_is_upper_cased(currency: str, expected: str) -> None:
    assert ok(make(PURCHASE, currency=currency))["currency"] == expected


@pytest.mark.parametrize("currency", ["US", "USDX", "", "12A", "US$", "EUR\n", 978, None])
def test_currency_rejected(currency: Any) -> None:
    assert "currency" in rejected(make(PURCHASE, currency=currency)).detail


def test_view_and_click_may_carry_order_fields() -> None:
    assert ok(make(CLICK, currency="usd"))["currency"] == "USD"


# --- properties size -------------------------------------------------------------------


def _props_of_size(size: int) -> dict[str, str]:
    props = {"k": "x" * (size - len(b'{"k":""}'))}
    assert len(orjson.dumps(props)) == size
    return props


def test_properties_at_limit_accepted() -> None:
    ok(make(CLICK, properties=_props_of_size(MAX_PROPERTIES_BYTES)))


def test_properties_over_limit_rejected() -> None:
    result = rejected(make(CLICK, properties=_props_of_size(MAX_PROPERTIES_BYTES + 1)), "too_large")
    assert "properties" in result.detail
    assert str(MAX_PROPERTIES_BYTES + 1) in result.detail


def test_properties_limit_counts_utf8_bytes() -> None:
    props = {"k": "é" * 2100}  # 2100 characters, 4200 bytes
    rejected(make(CLICK, properties=props), "too_large")


def test_unserialisable_properties_are_rejected_not_raised() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(300):  # orjson refuses to serialise beyond 254 levels
        node["a"] = {}
        node = node["a"]
    assert "properties" in rejected(make(CLICK, properties=deep)).detail
    assert "properties" in rejected(make(CLICK, properties={1: "non-str key"})).detail


# --- normalisation ---------------------------------------------------------------------


def test_channel_defaults_to_web() -> None:
    event = ok(CLICK)
    assert event["channel"] == "web"
    assert "channel" not in CLICK


def test_received_at_is_always_the_argument() -> None:
    assert ok(CLICK)["received_at"] == RECEIVED
    assert ok(make(CLICK, received_at=5))["received_at"] == RECEIVED


@pytest.mark.parametrize(
    ("event_time", "sent_at", "expected_ts"),
    [
        # no sent_at: the device time as given
        (T0, DROP, T0),
        # device clock 98 s behind the server's; the event happened 2 s before it was
        # sent, and the server received it at RECEIVED, so ts = RECEIVED - 2000
        (T0, T0 + 2_000, RECEIVED - 2_000),
        # device clock ahead (sent_at "after" received_at): same rule
        (RECEIVED + 3_600_000, RECEIVED + 3_600_500, RECEIVED - 500),
        # sent at the same instant as the event
        (T0, T0, RECEIVED),
        # RFC 3339 on both sides, 3.5 s apart
        ("2024-05-01T12:00:00Z", "2024-05-01T12:00:03.500Z", RECEIVED - 3_500),
        # mixed forms and offsets: 12:00:00Z == 14:00:00+02:00, sent 1.25 s later
        ("2024-05-01T14:00:00+02:00", T0 + 1_250, RECEIVED - 1_250),
    ],
)
def test_skew_correction(event_time: Any, sent_at: Any, expected_ts: int) -> None:
    assert ok(make(CLICK, event_time=event_time, sent_at=sent_at))["ts"] == expected_ts


@pytest.mark.parametrize(
    ("event_time", "expected_ts"),
    [
        (0, 0),
        (T0, T0),
        (float(T0), T0),  # JSON Schema counts 1714564800000.0 as an integer
        ("2024-05-01T12:00:00Z", T0),
        ("2024-05-01T12:00:00.250Z", T0 + 250),
        ("2024-05-01T12:00:00.2Z", T0 + 200),
        ("2024-05-01T12:00:00.123456789Z", T0 + 123),
        ("2024-05-01T12:00:00.9999Z", T0 + 999),
        ("2024-05-01T12:00:00+00:00", T0),
        ("2024-05-01T12:00:00-00:00", T0),
        ("2024-05-01T14:30:00+02:30", T0),
        ("2024-05-01T07:00:00-05:00", T0),
        ("2024-05-01T14:00:00+0200", T0),
        ("2024-05-01t12:00:00z", T0),  # RFC 3339 allows lower case t and z
        ("1970-01-01T00:00:00Z", 0),
        ("1969-12-31T23:59:59.999Z", -1),
        ("2016-12-31T23:59:60Z", 1_483_228_800_000),  # leap second -> next second
        ("2016-12-31T23:59:60.500Z", 1_483_228_800_000),
    ],
)
def test_event_time_forms(event_time: Any, expected_ts: int) -> None:
    assert ok(make(CLICK, event_time=event_time))["ts"] == expected_ts


def test_normalize_treats_naive_timestamps_as_utc() -> None:
    event = make(CLICK, event_time="2024-05-01T12:00:00")
    assert normalize(event, RECEIVED)["ts"] == T0


def test_normalize_adds_fields_and_keeps_the_rest() -> None:
    event = make(PURCHASE, currency="eur", channel="email", order_id="o-9", sent_at=T0 + 10)
    result = normalize(event, RECEIVED)
    assert result == {
        **event,
        "currency": "EUR",
        "ts": RECEIVED - 10,
        "received_at": RECEIVED,
    }


@pytest.mark.parametrize(
    "event",
    [
        make(CLICK, properties={"a": [1, 2]}, context={"utm": {"source": "x"}}),
        make(PURCHASE, currency="usd", received_at=1, sent_at="2024-05-01T12:00:01Z"),
    ],
)
def test_input_is_not_mutated(event: dict[str, Any]) -> None:
    before = copy.deepcopy(event)
    result = ok(event)
    assert event == before
    assert result is not event
    assert normalize(event, RECEIVED) is not event
    assert event == before


def test_rejected_input_is_not_mutated() -> None:
    event = make(CLICK, type="hover")
    before = copy.deepcopy(event)
    rejected(event)
    assert event == before


@pytest.mark.parametrize("example", load_schema("event")["examples"])
def test_schema_examples_are_accepted(example: dict[str, Any]) -> None:
    ok(example)
    assert isinstance(parse_event(orjson.dumps(example), RECEIVED), dict)
