"""Property tests for stream.core.validation: total on any input, exact on valid events."""

from __future__ import annotations

import copy
import string
from datetime import datetime, timedelta
from typing import Any

import orjson
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from stream.core.privacy import truncate_ip
from stream.core.validation import (
    MAX_EVENT_BYTES,
    MAX_PROPERTIES_BYTES,
    Rejection,
    check_event,
    parse_event,
)
from tests.strategies import json_scalars, json_values

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REASONS = {"invalid_json", "not_object", "schema", "too_large"}
EVENT_FIELDS = [
    "event_id", "type", "event_time", "sent_at", "user_id", "anonymous_id", "campaign_id",
    "variant_id", "channel", "session_id", "order_id", "revenue", "currency", "consent",
    "context", "properties", "received_at",
]  # fmt: skip
CHANNELS = ["web", "mobile", "email", "sms", "social", "search", "display"]
MAX_TS = 253_402_300_799_999
EPOCH = datetime(1970, 1, 1)
received_ms = st.integers(min_value=0, max_value=MAX_TS)

# --- arbitrary input ---------------------------------------------------------------------

# Python callers (the HTTP collector) can hand over values JSON cannot carry.
python_values = st.recursive(
    json_scalars | st.floats() | st.integers(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(), children, max_size=4)
    ),
    max_leaves=20,
)


def assert_outcome(result: object) -> None:
    assert isinstance(result, dict | Rejection)
    if isinstance(result, Rejection):
        assert result.reason in REASONS
        assert isinstance(result.detail, str)
        assert result.detail


@SETTINGS
@given(value=python_values, received=received_ms)
def test_check_event_is_total(value: Any, received: int) -> None:
    before = copy.deepcopy(value)
    assert_outcome(check_event(value, received))
    assert repr(value) == repr(before)  # never mutated (repr: NaN != NaN)


@SETTINGS
@given(value=json_values, received=received_ms)
def test_parse_event_is_total_on_json_text(value: Any, received: int) -> None:
    result = parse_event(orjson.dumps(value), received)
    assert_outcome(result)
    if not isinstance(value, dict):
        assert isinstance(result, Rejection)
        assert result.reason == "not_object"


@SETTINGS
@given(raw=st.binary(max_size=512), received=received_ms)
def test_parse_event_is_total_on_bytes(raw: bytes, received: int) -> None:
    assert_outcome(parse_event(raw, received))


# Near-misses reach deeper code: a valid event with fields replaced by arbitrary values.
@st.composite
def mangled_events(draw: st.DrawFn) -> dict[str, Any]:
    event = draw(valid_events())
    for field in draw(st.lists(st.sampled_from([*EVENT_FIELDS, "ts", "x"]), max_size=3)):
        if draw(st.booleans()):
            event[field] = draw(python_values)
        else:
            event.pop(field, None)
    return event


@SETTINGS
@given(event=st.deferred(lambda: mangled_events()), received=received_ms)
def test_near_valid_events_never_raise(event: dict[str, Any], received: int) -> None:
    before = repr(event)
    assert_outcome(check_event(event, received))
    assert repr(event) == before
    try:
        raw = orjson.dumps(event)
    except (orjson.JSONEncodeError, TypeError):
        return
    assert_outcome(parse_event(raw, received))


# --- valid events ---------------------------------------------------------------------------

ids = st.text(min_size=1, max_size=128)
short_text = st.text(max_size=40)


@st.composite
def rfc3339(draw: st.DrawFn) -> tuple[str, int]:
    """An RFC 3339 string and its epoch ms, computed without datetime.fromisoformat."""
    local = draw(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)))
    local = local.replace(microsecond=0)
    digits = draw(st.text(alphabet=string.digits, min_size=1, max_size=9) | st.just(""))
    offset_min = draw(st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59))
    if offset_min == 0 and draw(st.booleans()):
        zone = draw(st.sampled_from(["Z", "z", "+00:00", "-00:00"]))
    else:
        sign = "+" if offset_min >= 0 else "-"
        hours, minutes = divmod(abs(offset_min), 60)
        zone = f"{sign}{hours:02d}:{minutes:02d}"
    sep = draw(st.sampled_from(["T", "t"]))
    text = f"{local.year:04d}-{local.month:02d}-{local.day:02d}{sep}{local:%H:%M:%S}"
    if digits:
        text += "." + digits
    text += zone
    utc = local - timedelta(minutes=offset_min)
    ms = (utc - EPOCH) // timedelta(milliseconds=1) + int(digits[:3].ljust(3, "0"))
    return text, ms


@st.composite
def timestamps(draw: st.DrawFn) -> tuple[Any, int]:
    if draw(st.booleans()):
        ms = draw(st.integers(min_value=0, max_value=MAX_TS))
        return ms, ms
    return draw(rfc3339())


json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)


@st.composite
def valid_events(draw: st.DrawFn, with_expected: bool = False) -> Any:
    kind = draw(st.sampled_from(["view", "click", "purchase"]))
    event_time, event_ms = draw(timestamps())
    event: dict[str, Any] = {
        "event_id": draw(st.text(min_size=1, max_size=64)),
        "type": kind,
        "event_time": event_time,
    }
    who = draw(st.sampled_from(["user_id", "anonymous_id", "both"]))
    if who in ("user_id", "both"):
        event["user_id"] = draw(ids)
    if who in ("anonymous_id", "both"):
        event["anonymous_id"] = draw(ids)
    if kind != "purchase" or draw(st.booleans()):
        event["campaign_id"] = draw(ids)
    if kind == "purchase":
        event["revenue"] = draw(
            st.floats(min_value=0, allow_nan=False, allow_infinity=False)
            | st.integers(min_value=0, max_value=10**12)
        )
        event["currency"] = draw(st.text(alphabet=string.ascii_letters, min_size=3, max_size=3))
    sent_ms = None
    if draw(st.booleans()):
        event["sent_at"], sent_ms = draw(timestamps())
    optional: dict[str, st.SearchStrategy[Any]] = {
        "variant_id": ids,
        "channel": st.sampled_from(CHANNELS),
        "session_id": ids,
        "order_id": ids,
        "consent": st.fixed_dictionaries({}, optional={"marketing": st.booleans()}),
        "context": st.fixed_dictionaries(
            {},
            optional={
                "ip": short_text,
                "user_agent": short_text,
                "page_url": short_text,
                "locale": short_text,
                "utm": st.dictionaries(st.text(max_size=8), short_text, max_size=4),
            },
        ),
        "properties": json_objects,
        "received_at": st.integers(min_value=0, max_value=MAX_TS),
    }
    for field in draw(st.lists(st.sampled_from(sorted(optional)), unique=True)):
        event[field] = draw(optional[field])
    if not with_expected:
        return event
    return event, event_ms, sent_ms


@SETTINGS
@given(case=valid_events(with_expected=True), received=received_ms)
def test_valid_events_pass_and_normalise(case: Any, received: int) -> None:
    event, event_ms, sent_ms = case
    if "properties" in event:
        assume(len(orjson.dumps(event["properties"])) <= MAX_PROPERTIES_BYTES)
    before = copy.deepcopy(event)

    result = check_event(event, received)

    assert not isinstance(result, Rejection), result
    expected_ts = event_ms if sent_ms is None else received - (sent_ms - event_ms)
    expected = {
        **before,
        "ts": expected_ts,
        "received_at": received,
        "channel": before.get("channel", "web"),
    }
    if "currency" in before:
        expected["currency"] = before["currency"].upper()
    if "ip" in before.get("context", {}):  # truncated to its network, dropped when not an IP
        context = {k: v for k, v in before["context"].items() if k != "ip"}
        short = truncate_ip(before["context"]["ip"])
        if short is not None:
            context["ip"] = short
        expected["context"] = context
    assert result == expected
    assert event == before

    raw = orjson.dumps(event)
    assume(len(raw) <= MAX_EVENT_BYTES)
    assert parse_event(raw, received) == expected
