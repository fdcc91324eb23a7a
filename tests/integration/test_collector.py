"""The HTTP collector on a real worker and broker: status codes and no lost acknowledgements."""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson
import pytest

from tests.integration.helpers import consume_all, topic

pytestmark = [pytest.mark.integration, pytest.mark.kafka4]

AUTH = {"Authorization": "Bearer test-key"}


def ev(i: int | str, **extra: object) -> dict[str, object]:
    e: dict[str, object] = {
        "event_id": f"c-{i}",
        "type": "click",
        "event_time": int(time.time() * 1000),
        "user_id": f"u-{i}",
        "campaign_id": "cmp-9",
    }
    e.update(extra)
    return e


@pytest.fixture
def worker(make_worker):
    return make_worker(PULSE_RATE_LIMIT="1000")


async def test_status_codes(worker, worker_env, kafka) -> None:
    async with httpx.AsyncClient(base_url=worker.url, timeout=30) as client:
        url = "/v1/events"
        r = await client.post(url, content=orjson.dumps(ev(1)))
        assert r.status_code == 401 and "write key" in r.json()["error"]
        r = await client.post(
            url, content=orjson.dumps(ev(1)), headers={"Authorization": "Bearer nope"}
        )
        assert r.status_code == 401
        r = await client.post(url, content=b'[{"event_id": ', headers=AUTH)
        assert r.status_code == 400 and "JSON" in r.json()["error"]
        r = await client.post(url, content=b"42", headers=AUTH)
        assert r.status_code == 400
        r = await client.post(url, content=b"x" * (512 * 1024 + 1), headers=AUTH)
        assert r.status_code == 413
        r = await client.post(url, content=orjson.dumps([ev(i) for i in range(501)]), headers=AUTH)
        assert r.status_code == 413 and "500" in r.json()["error"]

        body = [ev("ok-1"), {"event_id": "bad", "type": "click"}, ev("ok-2", channel="fax")]
        r = await client.post(url, content=orjson.dumps(body), headers=AUTH)
        assert r.status_code == 202
        payload = r.json()
        assert payload["accepted"] == 1 and payload["rejected"] == 2
        assert [e["index"] for e in payload["errors"]] == [1, 2]
        assert {e["reason"] for e in payload["errors"]} == {"schema"}

        statuses = []
        for attempt in range(4):
            r = await client.post(
                url,
                content=orjson.dumps([ev(f"b{attempt}-{i}") for i in range(500)]),
                headers={"Authorization": "Bearer burst-key"},
            )
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert int(r.headers["Retry-After"]) >= 1
        assert 429 in statuses and statuses[0] == 202

    dlq = await consume_all(kafka.bootstrap, topic(worker_env, "events.dlq"), expected=2)
    payloads = [orjson.loads(orjson.loads(v)["payload"]) for _, v in dlq]
    assert {p["event_id"] for p in payloads} == {"bad", "c-ok-2"}
    # 400 and 413 bodies wrote nothing: only the 3 + burst events are on the topic
    worker.wait_metric("pulse_events_total", 1 + statuses.count(202) * 500)


async def test_every_acknowledged_event_is_on_the_topic(worker, worker_env, kafka) -> None:
    accepted_ids: set[str] = set()
    sem = asyncio.Semaphore(8)

    async def post(client: httpx.AsyncClient, batch: list[dict[str, object]]) -> None:
        async with sem:
            while True:
                r = await client.post("/v1/events", content=orjson.dumps(batch), headers=AUTH)
                if r.status_code == 429:
                    await asyncio.sleep(float(r.headers["Retry-After"]))
                    continue
                assert r.status_code == 202, r.text
                assert r.json()["accepted"] == len(batch)
                accepted_ids.update(str(e["event_id"]) for e in batch)
                return

    batches = [[ev(f"n{b}-{i}") for i in range(100)] for b in range(30)]
    async with httpx.AsyncClient(base_url=worker.url, timeout=60) as client:
        await asyncio.gather(*(post(client, b) for b in batches))
    assert len(accepted_ids) == 3000
    on_topic = await consume_all(kafka.bootstrap, topic(worker_env, "events"), expected=3000)
    ids = {orjson.loads(v)["event_id"] for _, v in on_topic}
    assert accepted_ids <= ids
    worker.wait_metric("pulse_events_total", 3000)
