"""Ingestion on the real broker: valid events flow, invalid ones reach the DLQ, dedup holds."""

from __future__ import annotations

import time

import orjson
import pytest

from tests.integration.helpers import consume_all, produce, topic

pytestmark = [pytest.mark.integration, pytest.mark.kafka4]


def event(event_id: str, etype: str = "view", **extra: object) -> dict[str, object]:
    e: dict[str, object] = {
        "event_id": event_id,
        "type": etype,
        "event_time": int(time.time() * 1000),
        "user_id": "u-1",
        "campaign_id": "cmp-1",
    }
    if etype == "purchase":
        e.update(revenue=12.5, currency="eur", order_id=f"o-{event_id}")
    e.update(extra)
    return e


INVALID = {
    "invalid_json": b'{"event_id": "x1", "type": ',
    "not_object": b'["a", "list", "is", "not", "an", "event"]',
    "schema": orjson.dumps({"event_id": "x3", "type": "teleport", "event_time": 1, "user_id": "u"}),
    "too_large": orjson.dumps(event("x4", properties={"blob": "x" * 40_000})),
}


async def test_valid_and_invalid_events(make_worker, worker_env, kafka) -> None:
    worker = make_worker()
    valid = [
        event("v1"),
        event("v2", "click", channel="email"),
        event("v3", "purchase", campaign_id=None),
    ]
    valid[2].pop("campaign_id")
    ten_mb = b'{"event_id":"big","pad":"' + b"y" * (10 * 1024 * 1024) + b'"}'
    records = [(b"u-1", orjson.dumps(valid[0]))]
    records += [(b"u-1", raw) for raw in INVALID.values()]
    records += [(b"u-1", ten_mb), (b"u-1", b"\xff\xfe not utf-8")]
    records += [(b"u-1", orjson.dumps(e)) for e in valid[1:]]  # after the poison: must still flow
    await produce(kafka.bootstrap, topic(worker_env, "events"), records)

    worker.wait_metric("pulse_events_total", 3)
    assert worker.metric("pulse_events_total", type="view", channel="web") == 1
    assert worker.metric("pulse_events_total", type="click", channel="email") == 1
    assert worker.metric("pulse_events_total", type="purchase", channel="web") == 1

    dlq = await consume_all(kafka.bootstrap, topic(worker_env, "events.dlq"), expected=6)
    by_reason: dict[str, list[dict]] = {}
    for _, value in dlq:
        rec = orjson.loads(value)
        assert set(rec) == {"reason", "detail", "payload", "received_at"}
        assert rec["detail"]
        by_reason.setdefault(rec["reason"], []).append(rec)
    assert sorted(len(v) for v in by_reason.values()) and set(by_reason) == set(INVALID)
    assert len(by_reason["invalid_json"]) == 2  # truncated JSON and non-UTF-8 bytes
    assert len(by_reason["too_large"]) == 2  # 40 KB event and the 10 MB value
    assert by_reason["invalid_json"][0]["payload"] == INVALID["invalid_json"].decode()
    assert by_reason["not_object"][0]["payload"] == INVALID["not_object"].decode()
    assert orjson.loads(by_reason["schema"][0]["payload"])["type"] == "teleport"
    big = [r for r in by_reason["too_large"] if r["payload"].startswith('{"event_id":"big"')]
    assert big and "truncated" in big[0]["detail"]
    for reason, recs in by_reason.items():
        assert worker.metric("pulse_events_invalid_total", reason=reason) == len(recs)


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
async def test_duplicate_counts_once_across_restart(make_worker, worker_env, kafka, store) -> None:
    events_topic = topic(worker_env, "events")
    first = make_worker(PULSE_STORE=store)
    e1 = orjson.dumps(event("dup-1"))
    await produce(kafka.bootstrap, events_topic, [(b"u-1", e1), (b"u-1", e1)])
    first.wait_metric("pulse_events_duplicate_total", 1)
    assert first.metric_sum("pulse_events_total") == 1
    assert first.stop() == 0

    second = make_worker(PULSE_STORE=store)
    await produce(
        kafka.bootstrap, events_topic, [(b"u-1", e1), (b"u-1", orjson.dumps(event("new-1")))]
    )
    second.wait_metric("pulse_events_total", 1)
    second.wait_metric("pulse_events_duplicate_total", 1)
    time.sleep(1.0)
    assert second.metric_sum("pulse_events_total") == 1, "dup-1 was counted again after restart"
    assert second.metric("pulse_events_duplicate_total") == 1
