"""Unit tests for stream.core.collector: write keys, rate limiter, body classification."""

from __future__ import annotations

import base64
import math
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.core.collector import (
    MAX_BODY_BYTES,
    MAX_ITEMS,
    BodyResult,
    RateLimiter,
    WriteKeys,
    body_key,
    classify_body,
    classify_parsed,
    parse_body,
    presented_key,
)
from stream.core.validation import MAX_PROPERTIES_BYTES

RECEIVED = 1_714_564_900_000
T0 = 1_714_564_800_000


# --- WriteKeys -------------------------------------------------------------------------------

Keys = list[str] | tuple[str, ...]

WRITE_KEY_CASES: dict[str, tuple[Keys, str | None, str | None]] = {
    "missing header": (["k1"], None, None),
    "empty header": (["k1"], "", None),
    "no scheme": (["k1"], "k1", None),
    "basic scheme": (["k1"], "Basic k1", None),
    "token scheme": (["k1"], "Token k1", None),
    "scheme without space": (["k1"], "Bearerk1", None),
    "empty bearer": (["k1"], "Bearer ", None),
    "wrong key": (["k1"], "Bearer nope", None),
    "prefix of key": (["k1"], "Bearer k", None),
    "key with suffix": (["k1"], "Bearer k1x", None),
    "right key": (["k1"], "Bearer k1", "k1"),
    "right key with spaces": (["k1"], "Bearer   k1  ", "k1"),
    "no keys configured": ([], "Bearer k1", None),
    "several keys, first": (["k1", "k2", "k3"], "Bearer k1", "k1"),
    "several keys, middle": (["k1", "k2", "k3"], "Bearer k2", "k2"),
    "several keys, last": (["k1", "k2", "k3"], "Bearer k3", "k3"),
    "several keys, none": (["k1", "k2", "k3"], "Bearer k4", None),
    "non-ascii key": (["clé-ü"], "Bearer clé-ü", "clé-ü"),
    "tuple of keys": (("a", "b"), "Bearer b", "b"),
    "basic, key as user": (["k1"], "Basic " + base64.b64encode(b"k1:").decode(), "k1"),
    "basic, with a password": (["k1"], "Basic " + base64.b64encode(b"k1:pw").decode(), "k1"),
    "basic, wrong key": (["k1"], "Basic " + base64.b64encode(b"k2:").decode(), None),
    "basic, not base64": (["k1"], "Basic k1!!", None),
    "basic, not utf-8": (["k1"], "Basic " + base64.b64encode(b"\xff:").decode(), None),
}


@pytest.mark.parametrize(
    ("keys", "header", "expected"), list(WRITE_KEY_CASES.values()), ids=list(WRITE_KEY_CASES)
)
def test_write_keys(keys: Keys, header: str | None, expected: str | None) -> None:
    wk = WriteKeys(keys)
    assert wk.match(header) == expected
    assert wk.check(header) is (expected is not None)


# --- RateLimiter -----------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# A step is (seconds to advance the clock before the call, key, n, expected wait).
Step = tuple[float, str, int, float]

RATE_CASES: dict[str, tuple[float, float, list[Step]]] = {
    "burst of one second": (10, 1.0, [(0, "k", 10, 0.0), (0, "k", 1, 0.1)]),
    "small takes within burst": (10, 1.0, [(0.0, "k", 3, 0.0)] * 3 + [(0.0, "k", 2, 0.1)]),
    "keys have separate buckets": (10, 1.0, [(0, "a", 10, 0.0), (0, "b", 10, 0.0)]),
    "refill over time": (
        10,
        1.0,
        [(0, "k", 10, 0.0), (0.5, "k", 5, 0.0), (0, "k", 1, 0.1)],
    ),
    "refill is capped at capacity": (
        10,
        1.0,
        [(0, "k", 10, 0.0), (3600, "k", 10, 0.0), (0, "k", 1, 0.1)],
    ),
    "wait is the time to refill the missing tokens": (
        10,
        1.0,
        [(0, "k", 10, 0.0), (0, "k", 5, 0.5), (0.2, "k", 5, 0.3)],
    ),
    "a refused request takes nothing": (
        10,
        1.0,
        [(0, "k", 10, 0.0), (0.05, "k", 1, 0.05), (0.05, "k", 1, 0.0)],
    ),
    "request larger than capacity on a full bucket passes": (
        10,
        1.0,
        [(0, "k", 100, 0.0), (0, "k", 1, 0.1)],
    ),
    "request larger than capacity waits for a full bucket only": (
        10,
        1.0,
        [(0, "k", 10, 0.0), (0, "k", 100, 1.0), (1.0, "k", 100, 0.0)],
    ),
    "burst of two seconds": (10, 2.0, [(0, "k", 20, 0.0), (0, "k", 1, 0.1)]),
    "rate below one event per second has capacity one": (
        0.5,
        1.0,
        [(0, "k", 1, 0.0), (0, "k", 1, 2.0), (2.0, "k", 1, 0.0)],
    ),
    "rate 0 disables": (0, 1.0, [(0, "k", 10**9, 0.0)] * 3),
    "negative rate disables": (-5, 1.0, [(0, "k", 10**9, 0.0)] * 3),
}


@pytest.mark.parametrize(
    ("rate", "burst_s", "steps"), list(RATE_CASES.values()), ids=list(RATE_CASES)
)
def test_rate_limiter(rate: float, burst_s: float, steps: list[Step]) -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=rate, burst_s=burst_s, clock=clock)
    for advance, key, n, expected in steps:
        clock.now += advance
        assert limiter.take(key, n) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    ("rate", "n", "retry_after"),
    [(10, 1, 1), (10, 10, 1), (1, 1, 1), (0.5, 1, 2), (0.25, 1, 4), (0.3, 1, 4)],
)
def test_retry_after_seconds(rate: float, n: int, retry_after: int) -> None:
    """The collector answers 429 with ``Retry-After: max(1, ceil(wait))``."""
    limiter = RateLimiter(rate=rate, clock=FakeClock())
    assert limiter.take("k", math.ceil(limiter.capacity)) == 0.0
    wait = limiter.take("k", n)
    assert wait > 0
    assert max(1, math.ceil(wait)) == retry_after
    # Waiting Retry-After seconds is always enough.
    later = RateLimiter(rate=rate, clock=FakeClock())
    later.take("k", math.ceil(later.capacity))
    later.clock.now += retry_after
    assert later.take("k", n) == 0.0


def test_rate_limiter_defaults_to_a_monotonic_clock() -> None:
    limiter = RateLimiter(rate=5)
    assert limiter.capacity == 5
    assert limiter.take("k", 5) == 0.0
    assert limiter.take("k", 5) > 0


# --- classify_body ---------------------------------------------------------------------------


def event(event_id: str = "e1", **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": event_id,
        "type": "view",
        "event_time": T0,
        "user_id": "u1",
        "campaign_id": "c1",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def body_of(value: object) -> bytes:
    return orjson.dumps(value)


REFUSED: dict[str, tuple[bytes, int, str]] = {
    "invalid json": (b'{"event_id": ', 400, "body is not valid JSON ("),
    "empty body": (b"", 400, "body is not valid JSON"),
    "not utf-8": (b"\xff\xfe", 400, "body is not valid JSON"),
    "number": (b"42", 400, "body must be a JSON object (one event) or an array of events"),
    "string": (b'"view"', 400, "body must be a JSON object"),
    "null": (b"null", 400, "body must be a JSON object"),
    "boolean": (b"true", 400, "body must be a JSON object"),
    "empty array": (b"[]", 400, "empty array: send at least one event"),
    "too many items": (
        body_of([event(f"e{i}") for i in range(MAX_ITEMS + 1)]),
        413,
        f"{MAX_ITEMS + 1} events in one request; send at most {MAX_ITEMS}",
    ),
    "too many non-objects": (
        body_of([1] * (MAX_ITEMS + 1)),
        413,
        f"send at most {MAX_ITEMS}",
    ),
    "body too large": (
        b" " * MAX_BODY_BYTES + body_of(event()),
        413,
        f"bytes; send at most {MAX_BODY_BYTES} per request",
    ),
    "body too large and not json": (
        b"x" * (MAX_BODY_BYTES + 1),
        413,
        f"body is {MAX_BODY_BYTES + 1} bytes; send at most {MAX_BODY_BYTES} per request",
    ),
}


@pytest.mark.parametrize(("body", "status", "message"), list(REFUSED.values()), ids=list(REFUSED))
def test_refused_bodies(body: bytes, status: int, message: str) -> None:
    result = classify_body(body, RECEIVED)
    assert result.status == status
    assert message in result.message
    assert result.accepted == []
    assert result.dlq == []
    assert result.errors == []
    assert result.reasons == {}


def padded(size: int) -> bytes:
    """One valid event padded with leading whitespace to exactly ``size`` bytes."""
    text = body_of(event())
    return b" " * (size - len(text)) + text


@pytest.mark.parametrize(
    ("body", "accepted"),
    [
        (padded(MAX_BODY_BYTES), 1),
        (body_of([event(f"e{i}") for i in range(MAX_ITEMS)]), MAX_ITEMS),
        (body_of([event()]), 1),
    ],
    ids=["exactly max bytes", "exactly max items", "array of one"],
)
def test_limits_are_inclusive(body: bytes, accepted: int) -> None:
    result = classify_body(body, RECEIVED)
    assert result.status == 202
    assert result.errors == []
    assert len(result.accepted) == accepted


@pytest.mark.parametrize(
    ("item", "key"),
    [
        (event(), b"u1"),
        (event(user_id=None, anonymous_id="a1"), b"a1"),
        (event(anonymous_id="a1"), b"u1"),  # user_id wins over anonymous_id
        (event(user_id="ü-1"), "ü-1".encode()),
    ],
    ids=["user_id", "anonymous_id", "both", "non-ascii"],
)
def test_single_object(item: dict[str, Any], key: bytes) -> None:
    result = classify_body(body_of(item), RECEIVED)
    assert result.status == 202
    assert result.message == ""
    assert result.errors == []
    assert result.dlq == []
    assert result.reasons == {}
    ((got_key, value),) = result.accepted
    assert got_key == key
    assert orjson.loads(value) == item  # the tracker's event as sent; the worker normalises


def test_array_with_per_index_errors_and_dlq_records() -> None:
    items: list[Any] = [
        event("e0"),
        {"type": "view", "user_id": "u-bad"},
        42,
        event("e3", user_id=None, anonymous_id="a3", channel="email"),
        event("e4", type="hover", anonymous_id="a4", user_id=None),
        event("e5", properties={"pad": "x" * MAX_PROPERTIES_BYTES}),
        ["nested"],
        event("e7", type="purchase", campaign_id=None, revenue=1, currency="usd"),
    ]
    result = classify_body(body_of(items), RECEIVED)

    assert result.status == 202
    assert result.message == ""
    assert [key for key, _ in result.accepted] == [b"u1", b"a3", b"u1"]
    assert [orjson.loads(v) for _, v in result.accepted] == [items[0], items[3], items[7]]

    assert [(e["index"], e["reason"]) for e in result.errors] == [
        (1, "schema"),
        (2, "not_object"),
        (4, "schema"),
        (5, "too_large"),
        (6, "not_object"),
    ]
    assert all(set(e) == {"index", "reason", "detail"} for e in result.errors)
    assert "data must contain" in result.errors[0]["detail"]
    assert "got a number" in result.errors[1]["detail"]
    assert "data.type must be one of" in result.errors[2]["detail"]
    assert "data.properties is" in result.errors[3]["detail"]
    assert "got an array" in result.errors[4]["detail"]
    assert result.reasons == {"schema": 2, "not_object": 2, "too_large": 1}

    # One DLQ record per error, keyed like the item, carrying the item's own JSON text.
    assert [key for key, _ in result.dlq] == [b"u-bad", None, b"a4", b"u1", None]
    dlq = [orjson.loads(v) for _, v in result.dlq]
    for record, error in zip(dlq, result.errors, strict=True):
        assert set(record) == {"reason", "detail", "payload", "received_at"}
        assert record["reason"] == error["reason"]
        assert record["detail"] == error["detail"]
        assert record["received_at"] == RECEIVED
        assert orjson.loads(record["payload"]) == items[error["index"]]


def test_all_items_rejected_is_still_202() -> None:
    result = classify_body(body_of([{"type": "view"}, "x"]), RECEIVED)
    assert result.status == 202
    assert result.accepted == []
    assert [e["index"] for e in result.errors] == [0, 1]
    assert len(result.dlq) == 2


@pytest.mark.parametrize(
    ("item", "key"),
    [
        ({"user_id": "u", "anonymous_id": "a"}, b"u"),
        ({"user_id": "", "anonymous_id": "a"}, b"a"),
        ({"anonymous_id": "a"}, b"a"),
        ({"user_id": 5}, None),
        ({"user_id": None, "anonymous_id": None}, None),
        ({}, None),
    ],
)
def test_key_of_rejected_objects(item: dict[str, Any], key: bytes | None) -> None:
    result = classify_body(body_of([item]), RECEIVED)
    assert [k for k, _ in result.dlq] == [key]


def test_body_result_reasons_counts_errors() -> None:
    result = BodyResult(
        202,
        errors=[
            {"index": 0, "reason": "schema", "detail": ""},
            {"index": 3, "reason": "schema", "detail": ""},
            {"index": 4, "reason": "not_object", "detail": ""},
        ],
    )
    assert result.reasons == {"schema": 2, "not_object": 1}


NESTED = b"[" * 300 + b"]" * 300


@pytest.mark.parametrize(
    "body",
    [
        b'{"event_id":"e","type":"view","event_time":1,"user_id":"u","campaign_id":"c",'
        b'"properties":{"a":' + NESTED + b"}}",
        b'{"event_id":"e","type":"view","event_time":1,"user_id":"u","campaign_id":"c",'
        b'"context":{"a":' + NESTED + b"}}",
        b"[" + NESTED + b"]",
    ],
    ids=["deep-properties", "deep-context", "deep-array-item"],
)
def test_deeply_nested_small_body_does_not_raise(body: bytes) -> None:
    assert len(body) < 1024
    result = classify_body(body, RECEIVED)
    assert result.status in (202, 400)


# --- hardening found by tests/integration/test_collector_fuzz.py -------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bearer k1", "k1"),
        ("BEARER k1", "k1"),
        ("Bearer k1\udcff", None),  # aiohttp keeps undecodable header bytes as surrogates
        ("Bearer \udcff\udcfe", None),
        ("Bearer " + "k" * 10_000, None),
    ],
)
def test_write_keys_hostile_headers(header: str, expected: str | None) -> None:
    assert WriteKeys(["k1"]).match(header) == expected


def test_accepted_events_are_written_with_a_truncated_ip() -> None:
    item = {
        "event_id": "e1",
        "type": "view",
        "event_time": T0,
        "user_id": "u1",
        "campaign_id": "c1",
        "context": {"ip": "203.0.113.77", "locale": "de"},
    }
    result = classify_body(orjson.dumps([item, {**item, "type": "hover"}]), RECEIVED)
    assert len(result.accepted) == 1 and len(result.dlq) == 1
    written = orjson.loads(result.accepted[0][1])
    assert written["context"] == {"ip": "203.0.113.0", "locale": "de"}
    assert result.accepted[0][0] == b"u1"  # the key stays the raw id: workers pseudonymise
    assert b"203.0.113.77" not in result.dlq[0][1]
    assert item["context"]["ip"] == "203.0.113.77"  # the parsed input is not modified


@pytest.mark.parametrize(
    ("authorization", "query", "expected"),
    [
        (None, None, None),  # nothing presented: the body may carry a writeKey
        (None, "k1", "k1"),
        ("Bearer k1", "other", "k1"),  # the header wins over the URL
        ("Token k1", "k1", ""),  # an unknown scheme presents an invalid key
        ("Basic " + base64.b64encode(b"k1:").decode(), None, "k1"),
        ("Basic ", None, ""),
        ("x" * 5000, None, ""),
    ],
)
def test_presented_key(authorization: str | None, query: str | None, expected: str | None) -> None:
    assert presented_key(authorization, query) == expected


def test_body_key_is_taken_out_of_an_object_body() -> None:
    event = {"writeKey": "k1", "event_id": "e1"}
    assert body_key(event) == "k1" and "writeKey" not in event
    assert body_key({"writeKey": 5}) is None
    assert body_key([{"writeKey": "k1"}]) is None and body_key("k1") is None


def test_a_write_key_in_the_body_does_not_fail_the_event_schema() -> None:
    item = {
        "writeKey": "k1",
        "event_id": "e1",
        "type": "view",
        "event_time": T0,
        "user_id": "u1",
        "campaign_id": "c1",
    }
    parsed = parse_body(orjson.dumps(item))
    assert body_key(parsed) == "k1"
    result = classify_parsed(parsed, RECEIVED, b"")
    assert len(result.accepted) == 1 and not result.errors


@given(st.sampled_from(["", "Bearer ", "bearer k", "Basic "]), st.binary(max_size=300))
def test_write_keys_never_raise(scheme: str, value: bytes) -> None:
    header = scheme + value.decode("utf-8", "surrogateescape")  # as aiohttp decodes headers
    assert WriteKeys(["k1"]).match(header) in (None, "k1")


@given(st.binary(max_size=2000))
def test_classify_body_never_raises_on_bytes(body: bytes) -> None:
    result = classify_body(body, RECEIVED)
    assert result.status in (202, 400, 413)
    assert len(result.accepted) + len(result.errors) == (len(result.dlq) + len(result.accepted))


def test_exhausted_key_is_refused_before_its_body_is_read() -> None:
    now = [0.0]
    rl = RateLimiter(rate=100, clock=lambda: now[0])
    assert rl.exhausted("k") == 0.0  # unknown key: a full bucket
    assert rl.take("k", 100) == 0.0
    assert rl.exhausted("k") == pytest.approx(0.01)
    now[0] = 0.005
    assert rl.exhausted("k") == pytest.approx(0.005)
    now[0] = 0.02
    assert rl.exhausted("k") == 0.0 and rl.take("k", 1) == 0.0
    assert RateLimiter(rate=0).exhausted("k") == 0.0
