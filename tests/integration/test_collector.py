"""The HTTP collector on a real worker and broker: status codes and no lost acknowledgements."""

from __future__ import annotations

import asyncio
import base64
import gzip
import time
from pathlib import Path

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

        # 4 x 500 events at once against 1,000 events/s with 1 s of burst (sent one after
        # another, a slow machine refills the bucket between requests)
        bursts = await asyncio.gather(
            *(
                client.post(
                    url,
                    content=orjson.dumps([ev(f"b{attempt}-{i}") for i in range(500)]),
                    headers={"Authorization": "Bearer burst-key"},
                )
                for attempt in range(4)
            )
        )
        statuses = [r.status_code for r in bursts]
        assert all(int(r.headers["Retry-After"]) >= 1 for r in bursts if r.status_code == 429)
        assert 429 in statuses and 202 in statuses and set(statuses) == {202, 429}

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


def peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))


async def test_browser_ready_collector(make_worker, worker_env, kafka) -> None:
    """CORS for the collector only, every form of write key, text/plain and gzip bodies,
    and a gzip bomb refused without being inflated past the limit."""
    shop = "https://shop.example"
    w = make_worker(PULSE_RATE_LIMIT="1000", PULSE_CORS_ORIGINS=f"{shop}, https://b.example")
    preflight = {
        "Origin": shop,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, content-encoding",
    }
    async with httpx.AsyncClient(base_url=w.url, timeout=30) as client:
        r = await client.options("/v1/events", headers=preflight)
        assert r.status_code == 200, r.text
        assert r.headers["Access-Control-Allow-Origin"] == shop
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
        allowed = r.headers["Access-Control-Allow-Headers"].lower()
        assert {"authorization", "content-type", "content-encoding"} <= set(allowed.split(","))
        assert r.headers["Access-Control-Max-Age"] == "86400"
        r = await client.options(
            "/v1/events", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert "Access-Control-Allow-Origin" not in r.headers
        r = await client.options(
            "/v1/campaigns", headers={**preflight, "Access-Control-Request-Method": "GET"}
        )
        assert "Access-Control-Allow-Origin" not in r.headers  # the read side stays same-origin
        r = await client.get("/v1/campaigns", headers={"Origin": shop})
        assert "Access-Control-Allow-Origin" not in r.headers

        basic = "Basic " + base64.b64encode(b"test-key:").decode()
        sent = {
            "bearer": await client.post(
                "/v1/events", content=orjson.dumps(ev("k-1")), headers={**AUTH, "Origin": shop}
            ),
            "basic": await client.post(
                "/v1/events", content=orjson.dumps(ev("k-2")), headers={"Authorization": basic}
            ),
            "query": await client.post(
                "/v1/events?key=test-key",
                content=orjson.dumps([ev("k-3")]),
                headers={"Content-Type": "text/plain;charset=UTF-8", "Origin": shop},
            ),
            "body": await client.post(
                "/v1/events",
                content=orjson.dumps({**ev("k-4"), "writeKey": "test-key"}),
                headers={"Content-Type": "text/plain"},
            ),
            "gzip": await client.post(
                "/v1/events",
                content=gzip.compress(orjson.dumps([ev("k-5"), ev("k-6")])),
                headers={**AUTH, "Content-Encoding": "gzip"},
            ),
        }
        for how, r in sent.items():
            assert r.status_code == 202 and r.json()["rejected"] == 0, (how, r.text)
        assert sent["bearer"].headers["Access-Control-Allow-Origin"] == shop
        assert "retry-after" in sent["query"].headers["Access-Control-Expose-Headers"].lower()
        for bad in ("Basic " + base64.b64encode(b"nope:").decode(), "Token test-key"):
            r = await client.post(
                "/v1/events", content=orjson.dumps(ev("x")), headers={"Authorization": bad}
            )
            assert r.status_code == 401, bad
        r = await client.post("/v1/events?key=nope", content=orjson.dumps(ev("x")))
        assert r.status_code == 401
        r = await client.post("/v1/events", content=orjson.dumps({**ev("x"), "writeKey": "nope"}))
        assert r.status_code == 401 and "writeKey" in r.json()["error"]

        # 64 MiB of zeros is 64 KiB gzipped: refused once 512 KB are inflated
        assert w.proc is not None
        before = peak_rss_kib(w.proc.pid)
        bomb = gzip.compress(b"[" + b" " * (64 << 20) + b"]", compresslevel=9)
        assert len(bomb) < 100_000
        r = await client.post(
            "/v1/events", content=bomb, headers={**AUTH, "Content-Encoding": "gzip"}
        )
        assert r.status_code == 413 and "decompression" in r.json()["error"]
        grown = peak_rss_kib(w.proc.pid) - before
        assert grown < 32 * 1024, f"the worker's peak RSS grew {grown} KiB on a gzip bomb"
    w.wait_metric("pulse_events_total", 6)
    assert w.metric_sum("pulse_events_total") == 6
