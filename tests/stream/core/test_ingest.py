"""Unit tests for stream.core.ingest: batches -> valid events, duplicates, counts, DLQ."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest

from stream.core.dedup import Deduplicator, decode_record
from stream.core.ingest import BatchResult, Ingestor, RawRecord, dlq_record
from stream.core.validation import MAX_EVENT_BYTES

DAY_MS = 86_400_000
T0 = 1_714_564_800_000  # 2024-05-01T12:00:00Z, the events' event_time
TS = T0 + 60_000  # record timestamps (broker receive time)


def event(event_id: str = "e1", **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": event_id,
        "type": "view",
        "event_time": T0,
        "user_id": "u1",
        "campaign_id": "c1",
    }
    base.update(changes)
    return base


def raw(event_id: str = "e1", **changes: Any) -> bytes:
    return orjson.dumps(event(event_id, **changes))


def too_large_payload(size: int) -> bytes:
    """A valid-looking JSON event padded to exactly ``size`` bytes."""
    head = raw("big")[:-1] + b',"properties":{"pad":"'
    tail = b'"}}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def ingestor(ttl_ms: int = DAY_MS) -> Ingestor:
    return Ingestor(Deduplicator(ttl_ms))


def decode_dlq(result: BatchResult) -> list[dict[str, Any]]:
    return [orjson.loads(value) for _, value in result.dlq]


LARGE = too_large_payload(33 * 1024)

# Rejected records: (value, reason, a fragment of the detail).
REJECTED: dict[str, tuple[bytes | None, str, str]] = {
    "invalid_json": (b'{"event_id": "e1"', "invalid_json", "invalid JSON"),
    "not_json_at_all": (b"hello", "invalid_json", "send UTF-8 encoded JSON text"),
    "not_utf8": (b"\xff\xfe{}", "invalid_json", "invalid JSON"),
    "none_value": (None, "invalid_json", "invalid JSON"),
    "empty_value": (b"", "invalid_json", "invalid JSON"),
    "array": (b"[1, 2]", "not_object", "got an array"),
    "string": (b'"view"', "not_object", "got a string"),
    "null": (b"null", "not_object", "got null"),
    "number": (b"42", "not_object", "got a number"),
    "schema_type": (raw(type="hover"), "schema", "data.type must be one of"),
    "schema_missing": (b'{"event_id": "e1"}', "schema", "data must contain"),
    "schema_no_user": (
        orjson.dumps({k: v for k, v in event().items() if k != "user_id"}),
        "schema",
        "user_id or anonymous_id",
    ),
    "too_large": (LARGE, "too_large", f"over the {MAX_EVENT_BYTES}-byte limit"),
    "properties_too_large": (
        raw(properties={"pad": "x" * 5000}),
        "too_large",
        "data.properties is",
    ),
}


@pytest.mark.parametrize(("value", "reason", "detail"), list(REJECTED.values()), ids=list(REJECTED))
def test_rejected_record_goes_to_the_dlq(value: bytes | None, reason: str, detail: str) -> None:
    result = ingestor().process([(b"key-1", value, 3, 42, TS)])
    assert result.valid == []
    assert result.duplicates == 0
    assert result.invalid == Counter({reason: 1})
    assert len(result.dlq) == 1
    key, _ = result.dlq[0]
    assert key == b"key-1"
    (record,) = decode_dlq(result)
    assert set(record) == {"reason", "detail", "payload", "received_at"}
    assert record["reason"] == reason
    assert detail in record["detail"]
    original = value or b""
    assert record["payload"] == original[:MAX_EVENT_BYTES].decode("utf-8", errors="replace")
    assert record["received_at"] == TS


def test_rejected_record_does_not_touch_dedup_state() -> None:
    ing = ingestor()
    ing.process([(None, b"{", 0, 0, TS), (None, raw(type="hover"), 0, 1, TS)])
    assert len(ing.dedup) == 0
    assert ing.dedup.drain_records() == {}


def test_dedup_is_per_partition() -> None:
    """Copies of an event share its key, so its partition: ids are remembered per partition."""
    result = ingestor().process([(b"u7", raw("e7"), 2, 1, TS), (b"u8", raw("e7"), 3, 0, TS)])
    assert [e["event_id"] for e in result.valid] == ["e7", "e7"]


def test_mixed_batch() -> None:
    records: list[RawRecord] = [
        (b"u1", raw("e1"), 0, 0, TS + 1),  # valid
        (b"u1", raw("e1"), 0, 1, TS + 2),  # duplicate of e1
        (b"u2", b"{not json", 0, 2, TS + 3),  # invalid_json
        (b"u3", b"[1, 2, 3]", 1, 0, TS + 4),  # not_object
        (b"u4", raw("e4", type="hover"), 1, 1, TS + 5),  # schema
        (None, LARGE, 1, 2, TS + 6),  # too_large
        (b"u6", None, 2, 0, TS + 7),  # None value
        (b"u7", raw("e7", channel="email"), 2, 1, TS + 8),  # valid
        (b"u7", raw("e7"), 2, 2, TS + 9),  # duplicate of e7 (same key, same partition)
    ]
    result = ingestor().process(records)

    assert [e["event_id"] for e in result.valid] == ["e1", "e7"]
    assert result.duplicates == 2
    assert result.invalid == Counter(
        {"invalid_json": 2, "not_object": 1, "schema": 1, "too_large": 1}
    )
    assert [key for key, _ in result.dlq] == [b"u2", b"u3", b"u4", None, b"u6"]
    dlq = decode_dlq(result)
    assert [r["reason"] for r in dlq] == [
        "invalid_json",
        "not_object",
        "schema",
        "too_large",
        "invalid_json",
    ]
    assert [r["payload"] for r in dlq] == [
        "{not json",
        "[1, 2, 3]",
        raw("e4", type="hover").decode(),
        LARGE[:MAX_EVENT_BYTES].decode(),  # anything over 32 KB is truncated
        "",
    ]
    assert [r["received_at"] for r in dlq] == [TS + 3, TS + 4, TS + 5, TS + 6, TS + 7]
    assert all(isinstance(r["detail"], str) and r["detail"] for r in dlq)
    assert dlq[3]["detail"].endswith(f"(payload truncated to its first {MAX_EVENT_BYTES} bytes)")
    assert "(payload truncated" not in dlq[2]["detail"]
    assert [e["received_at"] for e in result.valid] == [TS + 1, TS + 8]
    assert [e["channel"] for e in result.valid] == ["web", "email"]


def test_empty_batch() -> None:
    result = ingestor().process([])
    assert result == BatchResult()


def test_ten_megabyte_payload_is_truncated_in_the_dlq() -> None:
    size = 10 * 1024 * 1024
    value = too_large_payload(size)
    result = ingestor().process([(b"k", value, 0, 0, TS)])
    assert result.invalid == Counter({"too_large": 1})
    (record,) = decode_dlq(result)
    assert record["reason"] == "too_large"
    assert f"event is {size} bytes" in record["detail"]
    assert f"(payload truncated to its first {MAX_EVENT_BYTES} bytes)" in record["detail"]
    assert record["payload"] == value[:MAX_EVENT_BYTES].decode()
    assert len(record["payload"].encode()) == MAX_EVENT_BYTES
    assert len(result.dlq[0][1]) < 2 * MAX_EVENT_BYTES  # the DLQ record itself stays small


@pytest.mark.parametrize(
    ("size", "truncated"),
    [(0, False), (100, False), (MAX_EVENT_BYTES, False), (MAX_EVENT_BYTES + 1, True)],
)
def test_dlq_record_truncation_boundary(size: int, truncated: bool) -> None:
    payload = b"y" * size
    record = orjson.loads(dlq_record("too_large", "why", payload, 7))
    assert record["payload"] == "y" * min(size, MAX_EVENT_BYTES)
    assert record["received_at"] == 7
    assert record["reason"] == "too_large"
    if truncated:
        assert record["detail"] == (f"why (payload truncated to its first {MAX_EVENT_BYTES} bytes)")
    else:
        assert record["detail"] == "why"


def test_dlq_record_truncation_inside_a_multibyte_character_stays_decodable() -> None:
    payload = b"a" * (MAX_EVENT_BYTES - 1) + "é".encode() * 10
    record = orjson.loads(dlq_record("too_large", "why", payload, 0))
    assert record["payload"] == "a" * (MAX_EVENT_BYTES - 1) + "\ufffd"


@pytest.mark.parametrize(
    ("ts_ms", "now_ms", "expected_received"),
    [
        (TS, None, TS),
        (TS, TS + 5_000, TS),  # the record timestamp wins when present
        (0, TS + 5_000, TS + 5_000),
        (-1, TS + 5_000, TS + 5_000),  # Kafka's "no timestamp"
        (0, None, 0),
    ],
)
def test_received_time_falls_back_to_now(
    ts_ms: int, now_ms: int | None, expected_received: int
) -> None:
    records: list[RawRecord] = [(b"k", raw("e1"), 0, 0, ts_ms), (b"k", b"{", 0, 1, ts_ms)]
    result = ingestor().process(records, now_ms=now_ms)
    (valid,) = result.valid
    assert valid["received_at"] == expected_received
    (record,) = decode_dlq(result)
    assert record["received_at"] == expected_received


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, {"ts": T0, "channel": "web"}),
        ({"channel": "email"}, {"ts": T0, "channel": "email"}),
        # sent_at corrects device clock skew: ts = received - (sent_at - event_time)
        ({"sent_at": T0 + 2_000}, {"ts": TS - 2_000, "channel": "web"}),
        ({"event_time": "2024-05-01T12:00:00Z"}, {"ts": T0, "channel": "web"}),
        (
            {"type": "purchase", "revenue": 9.5, "currency": "eur", "campaign_id": None},
            {"ts": T0, "channel": "web", "currency": "EUR"},
        ),
    ],
    ids=["defaults", "channel", "sent_at", "rfc3339", "purchase"],
)
def test_valid_events_are_normalised(changes: dict[str, Any], expected: dict[str, Any]) -> None:
    ev = event(**changes)
    ev = {k: v for k, v in ev.items() if v is not None}
    result = ingestor().process([(b"k", orjson.dumps(ev), 0, 0, TS)], now_ms=TS + 99)
    (valid,) = result.valid
    assert result.dlq == []
    assert valid["received_at"] == TS
    for field, value in expected.items():
        assert valid[field] == value
    for field, value in ev.items():
        if field not in expected:
            assert valid[field] == value


@pytest.mark.parametrize(
    ("now_ms", "expected_first_seen"),
    [(None, TS), (TS + 5_000, TS + 5_000)],
    ids=["record-time", "now"],
)
def test_dedup_clock_is_now_when_given(now_ms: int | None, expected_first_seen: int) -> None:
    ing = ingestor()
    ing.process([(b"k", raw("e1"), 2, 9, TS)], now_ms=now_ms)
    record = decode_record(ing.dedup.drain_records()[2])
    assert (record.seen_ms, record.ids, list(record.offsets)) == (expected_first_seen, ["e1"], [9])


def test_duplicates_across_batches_and_after_ttl() -> None:
    ing = ingestor(ttl_ms=1_000)
    first = ing.process([(b"k", raw("e1"), 0, 0, TS)], now_ms=10_000)
    again = ing.process([(b"k", raw("e1"), 0, 1, TS)], now_ms=10_500)
    ing.dedup.expire(11_200)  # remembered for the TTL and at most one segment (TTL/8) longer
    later = ing.process([(b"k", raw("e1"), 0, 2, TS)], now_ms=11_200)
    assert (len(first.valid), first.duplicates) == (1, 0)
    assert (len(again.valid), again.duplicates) == (0, 1)
    assert (len(later.valid), later.duplicates) == (1, 0)


def test_redelivered_record_is_processed_again() -> None:
    ing = ingestor()
    record: RawRecord = (b"k", raw("e1"), 0, 5, TS)
    first = ing.process([record], now_ms=TS)
    redelivered = ing.process([record], now_ms=TS + 1_000)  # e.g. after a crash
    assert len(first.valid) == len(redelivered.valid) == 1
    assert redelivered.duplicates == 0


def test_deeply_nested_properties_are_rejected_not_raised() -> None:
    nested = b'{"a":' + b"[" * 300 + b"]" * 300 + b"}"
    value = raw()[:-1] + b',"properties":' + nested + b"}"
    result = ingestor().process([(b"k", value, 0, 0, TS)])
    assert result.invalid == Counter({"schema": 1})
    (record,) = decode_dlq(result)
    assert "data.properties cannot be serialised" in record["detail"]
    assert record["payload"] == value.decode()
