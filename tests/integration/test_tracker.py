"""pulse.js, the browser tracker, in real headless Chromium against real workers and Kafka.

The shop page comes from a second origin (an aiohttp server on another port) and
loads ``/v1/pulse.js`` from the worker, so every send is a real cross-origin
request. Chromium is driven over the DevTools protocol as the live-page test does.
Each test tracks a known plan of views, clicks, add-to-carts, purchases and an
identify, then checks what Pulse made of it:

* every tracked ``event_id`` is on the events topic (nothing lost) and none in the DLQ;
* the closed window records equal a count made here from the plan: each event
  counted once, in the window of its skew-corrected time (``received_at -
  (sent_at - event_time)``, from the first copy on the topic, as dedup keeps it);
* the page logged no console error or warning and threw nothing.

Workers run with 2 s windows and a grace of 10 minutes, so no retried or
re-sent event can be late; once every event is on the topic, one event from 1 h
in the future is produced to each partition, which moves every watermark past
the test's windows and closes them (event-time closing, as in production).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import re
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from stream.tools.broker import KafkaBroker, free_port
from tests.integration.conftest import Worker, deployment_env
from tests.integration.helpers import (
    consume_all,
    consume_records,
    produce,
    records_by_key,
    topic,
)
from tests.integration.test_live_page import CDP, chromium, chromium_path
from tests.integration.test_outage import OUTAGE_S, outage_broker  # noqa: F401  (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "stream" / "http" / "static" / "pulse.js"
KEY = "test-key"  # one of deployment_env's PULSE_WRITE_KEYS
WINDOW = {"PULSE_WINDOW": "2s", "PULSE_GRACE": "10m", "PULSE_CURRENCY": "USD"}
SIZE_MS = 2000
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
FIELDS = ("views", "clicks", "carts", "purchases", "revenue")
INDEX = {"view": 0, "click": 1, "add_to_cart": 2, "purchase": 3}

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">
<title>shop</title>
<script src="{collector}/v1/pulse.js"></script>
<script>
  Pulse.init(Object.assign({{endpoint: "{collector}", writeKey: "{key}"}}, {options}));
  Pulse.consent({{marketing: true}});
</script>
</head><body><h1>A shop on another origin</h1></body></html>
"""
AWAY = '<!doctype html><html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
AWAY += "<title>away</title></head><body><p>another page</p></body></html>"

# Before any page script: no crypto.randomUUID (as on a plain-http page), getRandomValues
# counted, every sendBeacon recorded (body size, result) in localStorage, where the
# next page of the origin can read it.
NO_RANDOM_UUID = """
delete Crypto.prototype.randomUUID;
window.__randomValues = 0;
const grv = Crypto.prototype.getRandomValues;
Crypto.prototype.getRandomValues = function (a) {
  window.__randomValues++;
  return grv.call(this, a);
};
const beacon = navigator.sendBeacon.bind(navigator);
navigator.sendBeacon = function (url, body) {
  const ok = beacon(url, body);
  const log = JSON.parse(localStorage.getItem("test.beacons") || "[]");
  log.push({url: String(url), size: body.size, type: body.type, ok: ok});
  localStorage.setItem("test.beacons", JSON.stringify(log));
  return ok;
};
"""


# --- the second origin ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def shop_site(collector: str) -> AsyncIterator[str]:
    """Serve ``/shop`` (loads pulse.js from ``collector``; ``?o=`` JSON init options)
    and ``/away`` on 127.0.0.1 at a port of its own: an origin other than the worker's."""

    async def shop(request: web.Request) -> web.Response:
        options = json.dumps(json.loads(request.query.get("o", "{}")))
        html = PAGE.format(collector=collector, key=KEY, options=options)
        return web.Response(text=html, content_type="text/html")

    async def away(request: web.Request) -> web.Response:
        return web.Response(text=AWAY, content_type="text/html")

    app = web.Application()
    app.router.add_get("/shop", shop)
    app.router.add_get("/away", away)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


# --- the browser ------------------------------------------------------------------------


class Tab:
    """The Chromium page, with the few things these tests do to it."""

    def __init__(self, cdp: CDP, site: str) -> None:
        self.cdp = cdp
        self.site = site

    async def open(self, path: str) -> None:
        loaded = self.cdp.expect("Page.loadEventFired")
        nav = await self.cdp.send("Page.navigate", url=self.site + path)
        assert "errorText" not in nav, f"navigation failed: {nav}"
        await asyncio.wait_for(loaded, 15)

    async def js(self, expression: str) -> Any:
        result = await self.cdp.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"page evaluation failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def track(self, calls: list[Call]) -> list[str]:
        """Make the calls in the page; return the event ids pulse.js gave them."""
        script = json.dumps([[c.method, c.arg] for c in calls])
        ids = await self.js(f"{script}.map(([m, a]) => Pulse[m](a))")
        for call, event_id in zip(calls, ids, strict=True):
            call.event_id = event_id
        return list(ids)

    async def queued(self) -> int:
        return int(await self.js("Pulse.queued"))

    async def drained(self, timeout_s: float) -> float:
        """Wait until pulse.js has an acknowledgement for every queued event."""
        start = time.monotonic()
        while (n := await self.queued()) > 0:
            assert time.monotonic() - start < timeout_s, f"{n} events still queued"
            await asyncio.sleep(0.2)
        return time.monotonic() - start

    async def offline(self, offline: bool) -> None:
        await self.cdp.send(
            "Network.emulateNetworkConditions",
            offline=offline,
            latency=0,
            downloadThroughput=-1,
            uploadThroughput=-1,
        )


@contextlib.asynccontextmanager
async def browser(tmp_path: Path, site: str, before_load: str | None = None) -> AsyncIterator[Tab]:
    async with chromium(tmp_path / "chromium-profile", tmp_path / "chromium.log") as cdp:
        for domain in ("Runtime", "Log", "Page", "Network"):
            await cdp.send(f"{domain}.enable")
        if before_load:
            await cdp.send("Page.addScriptToEvaluateOnNewDocument", source=before_load)
        yield Tab(cdp, site)


# --- what is tracked and what Pulse must make of it ---------------------------------------


@dataclass
class Call:
    method: str
    arg: Any
    event_id: str = ""

    @property
    def type(self) -> str:
        return {"addToCart": "add_to_cart"}.get(self.method, self.method)

    @property
    def row(self) -> tuple[str, str, str] | None:
        if not isinstance(self.arg, dict) or "campaign_id" not in self.arg:
            return None
        a = self.arg
        return a["campaign_id"], a.get("variant_id", ""), a.get("channel", "web")


def plan(seed: int, prefix: str, n: int, pad: int = 0) -> list[Call]:
    """``n`` calls over three campaigns, two variants and three channels (web by default).

    Views and clicks name an item; add-to-carts and purchases a campaign too, so that
    they land in its window row; ``pad`` characters of properties make events bigger.
    """
    rng = random.Random(seed)
    calls = []
    for i in range(n):
        base: dict[str, Any] = {
            "campaign_id": f"{prefix}-{rng.randrange(3)}",
            "variant_id": rng.choice("AB"),
            "item_id": f"sku-{rng.randrange(20)}",
        }
        channel = rng.choice(["web", "email", "social"])
        if channel != "web" or rng.random() < 0.5:
            base["channel"] = channel
        if rng.random() < 0.3:
            base["session_id"] = f"s-{prefix}"
        if pad:
            base["properties"] = {"note": "n" * pad, "i": i}
        r = rng.random()
        if r < 0.5:
            calls.append(Call("view", base))
        elif r < 0.75:
            calls.append(Call("click", {**base, "position": i % 4}))  # unknown -> properties
        elif r < 0.88:
            calls.append(Call("addToCart", base))
        else:
            price = rng.randrange(1, 400) * 0.25  # exact in binary
            qty = rng.randrange(1, 3)
            calls.append(
                Call(
                    "purchase",
                    {
                        **base,
                        "order_id": f"o-{prefix}-{i}",
                        "revenue": price * qty,
                        "currency": "USD",
                        "items": [{"item_id": base["item_id"], "quantity": qty, "price": price}],
                    },
                )
            )
    return calls


@dataclass
class Sent:
    """What the events topic holds for the tracked ids."""

    copies: Counter[str] = field(default_factory=Counter)
    event_ms: dict[str, int] = field(default_factory=dict)  # first copy's corrected time
    events: dict[str, dict[str, Any]] = field(default_factory=dict)  # first copy


async def read_topic(bootstrap: str, name: str) -> list[tuple[int, int, int, bytes]]:
    """(partition, offset, timestamp ms, value) of every record, to the topic's end."""
    records = await consume_records(bootstrap, name)
    return sorted((m.partition, m.offset, m.timestamp, m.value) for m in records)


async def on_topic(env: dict[str, str], ids: set[str], timeout_s: float) -> Sent:
    """Wait until every id is on the events topic; the copies and first copies found."""
    deadline = time.monotonic() + timeout_s
    while True:
        sent = Sent()
        for _, _, ts, value in await read_topic(env["PULSE_KAFKA_BOOTSTRAP"], topic(env, "events")):
            event = orjson.loads(value)
            eid = event.get("event_id")
            if eid not in ids:
                continue
            sent.copies[eid] += 1
            if eid not in sent.events:  # dedup keeps the first copy of its partition
                sent.events[eid] = event
                sent.event_ms[eid] = ts - (event["sent_at"] - event["event_time"])
        missing = ids - sent.copies.keys()
        if not missing:
            return sent
        assert time.monotonic() < deadline, f"{len(missing)} tracked events never reached Kafka"
        await asyncio.sleep(0.5)


def expected_rows(calls: list[Call], sent: Sent) -> dict[tuple[Any, ...], list[Any]]:
    """(campaign, variant, channel, window_start) -> [views, clicks, carts, purchases, revenue]."""
    rows: dict[tuple[Any, ...], list[Any]] = defaultdict(lambda: [0, 0, 0, 0, 0.0])
    for c in calls:
        if c.row is None:
            continue
        ms = sent.event_ms[c.event_id]
        row = rows[(*c.row, ms - ms % SIZE_MS)]
        row[INDEX[c.type]] += 1
        if c.type == "purchase":
            row[4] += c.arg["revenue"]
    return dict(rows)


async def close_windows(env: dict[str, str]) -> None:
    """One event an hour ahead on every partition: every watermark passes the test's windows."""
    ahead = int(time.time() * 1000) + 3_600_000
    for p in range(int(env["PULSE_PARTITIONS"])):
        event = {
            "event_id": f"close-{uuid.uuid4().hex}",
            "type": "view",
            "event_time": ahead,
            "user_id": f"closer-{p}",
            "campaign_id": "zz-closer",
        }
        await produce(
            env["PULSE_KAFKA_BOOTSTRAP"], topic(env, "events"), [(None, orjson.dumps(event))], p
        )


async def assert_counted_once(
    env: dict[str, str], calls: list[Call], timeout_s: float = 60
) -> Sent:
    """Every tracked event on the topic, none in the DLQ, window records exactly as planned."""
    ids = {c.event_id for c in calls}
    assert len(ids) == len(calls), "pulse.js gave two events the same id"
    sent = await on_topic(env, ids, timeout_s)
    for c in calls:  # what the page asked for is what was sent
        event = sent.events[c.event_id]
        assert event["type"] == c.type, (event, c)
        if isinstance(c.arg, dict):
            for name in ("campaign_id", "variant_id", "item_id", "revenue", "items", "channel"):
                assert event.get(name) == c.arg.get(name), (name, event, c)
    bootstrap = env["PULSE_KAFKA_BOOTSTRAP"]
    dlq = [orjson.loads(v) for _, v in await consume_all(bootstrap, topic(env, "events.dlq"))]
    rejected = [d for d in dlq if any(i in d["payload"] for i in ids)]
    assert not rejected, f"tracked events went to the DLQ: {rejected[:3]}"

    want = expected_rows(calls, sent)
    await close_windows(env)
    campaigns = {k[0] for k in want}
    deadline = time.monotonic() + timeout_s
    while True:
        got = records_by_key(await consume_all(bootstrap, topic(env, "metrics")))
        if want.keys() <= got.keys():
            break
        assert time.monotonic() < deadline, f"window records missing: {want.keys() - got.keys()}"
        await asyncio.sleep(0.5)
    await asyncio.sleep(3)  # time for a repeated record to show up (records_by_key fails on it)
    got = records_by_key(await consume_all(bootstrap, topic(env, "metrics")))
    live = {
        k: [r.get(f) for f in FIELDS] for k, r in got.items() if k[0] in campaigns
    }  # fmt: skip
    want = {k: [*v[:4], round(v[4], 6)] for k, v in want.items()}
    diff = {
        k: (live.get(k), want.get(k))
        for k in live.keys() | want.keys()
        if live.get(k) != want.get(k)
    }
    assert not diff, f"{len(diff)} of {len(want)} window records differ ({FIELDS}): " + "\n".join(
        f"  {k}: live {a}, expected {b}" for k, (a, b) in sorted(diff.items())
    )
    return sent


def chunks(calls: list[Call], size: int) -> Iterator[list[Call]]:
    for i in range(0, len(calls), size):
        yield calls[i : i + size]


# --- the tests ------------------------------------------------------------------------------


@pytest.fixture
def worker(make_worker) -> Worker:
    chromium_path()  # fail before starting anything when the browser is missing
    return make_worker(**WINDOW)


async def test_pulse_js_is_served_cacheable(worker: Worker) -> None:
    body = SCRIPT.read_bytes()
    async with httpx.AsyncClient(base_url=worker.url, timeout=10) as client:
        r = await client.get("/v1/pulse.js", headers={"Accept-Encoding": "identity"})
        assert r.status_code == 200 and r.content == body
        assert r.headers["Content-Type"] == "application/javascript; charset=utf-8"
        assert r.headers["Cache-Control"] == "public, max-age=300"
        etag = r.headers["ETag"]
        assert re.fullmatch(r'"[0-9a-f]{32}"', etag), etag
        for asked in (etag, f'"other", {etag}', f"W/{etag}", "*"):
            again = await client.get(
                "/v1/pulse.js", headers={"If-None-Match": asked, "Accept-Encoding": "identity"}
            )
            assert again.status_code == 304 and again.content == b"", asked
            assert again.headers["ETag"] == etag
        other = await client.get(
            "/v1/pulse.js", headers={"If-None-Match": '"other"', "Accept-Encoding": "identity"}
        )
        assert other.status_code == 200 and other.content == body
        gz = await client.get("/v1/pulse.js", headers={"Accept-Encoding": "gzip"})
        assert gz.headers["Content-Encoding"] == "gzip" and gz.content == body  # decoded
        assert gz.headers["ETag"] != etag and gz.headers["Vary"] == "Accept-Encoding"


async def test_tracked_events_reach_the_window_records_exactly(worker: Worker, tmp_path) -> None:
    calls = plan(1, "t1", 150)
    calls.insert(70, Call("identify", "u-42"))  # from here on the events carry user_id
    async with shop_site(worker.url) as site, browser(tmp_path, site) as tab:
        await tab.open("/shop")
        anonymous = await tab.js("Pulse.anonymousId")
        assert UUID4.match(anonymous), anonymous
        for part in chunks(calls, 10):  # about 6 s of traffic: three windows or more
            await tab.track(part)
            await asyncio.sleep(0.4)
        await tab.drained(timeout_s=20)
        assert await tab.js("Pulse.userId") == "u-42"
        problems = tab.cdp.problems()
    assert problems == [], "the page logged problems:\n" + "\n".join(problems)

    sent = await assert_counted_once(worker.env, [c for c in calls if c.method != "identify"])
    ident = await on_topic(worker.env, {calls[70].event_id}, 10)
    event = ident.events[calls[70].event_id]
    assert (event["type"], event["user_id"], event["anonymous_id"]) == (
        "identify",
        "u-42",
        anonymous,
    )
    before, after = calls[69].event_id, calls[71].event_id
    assert "user_id" not in sent.events[before] and sent.events[after]["user_id"] == "u-42"
    for event in sent.events.values():
        assert event["anonymous_id"] == anonymous and event["consent"] == {"marketing": True}
        assert UUID4.match(event["event_id"]) and event["sent_at"] >= event["event_time"]
        ctx = event["context"]
        assert ctx["page_url"].endswith("/shop") and ctx["user_agent"] and ctx["locale"]
        assert ctx["timezone"]
    for c in calls:
        if c.method == "click":  # a name pulse.js does not know goes into properties
            assert sent.events[c.event_id]["properties"] == {"position": c.arg["position"]}
    assert max(sent.copies.values()) == 1, "an acknowledged event was sent again"


async def test_page_closed_mid_batch_is_delivered_by_beacon(worker: Worker, tmp_path) -> None:
    first, rest = plan(2, "t2", 20), plan(3, "t2", 30)
    async with shop_site(worker.url) as site, browser(tmp_path, site) as tab:
        await tab.open("/shop")
        await tab.track(first)
        await tab.drained(timeout_s=10)
        await tab.track(rest)  # fewer than batchSize: they wait for the 2 s flush ...
        assert await tab.queued() == len(rest)
        await tab.open("/away")  # ... which never comes: the page is left at once
        # the beacon delivered them: on the topic before pulse.js runs again
        await on_topic(worker.env, {c.event_id for c in rest}, timeout_s=15)

        # The next page load finds them still queued (a beacon's fate is unknown) and
        # re-sends them; dedup counts them once.
        await tab.open("/shop")
        await tab.drained(timeout_s=20)
        problems = tab.cdp.problems()
    assert problems == [], "the page logged problems:\n" + "\n".join(problems)
    sent = await assert_counted_once(worker.env, first + rest)
    assert all(sent.copies[c.event_id] == 2 for c in rest), sent.copies
    assert all(sent.copies[c.event_id] == 1 for c in first), sent.copies
    worker.wait_metric("pulse_events_duplicate_total", len(rest), timeout_s=30)


async def test_offline_period_is_sent_when_back_online(worker: Worker, tmp_path) -> None:
    before, during = plan(4, "t3", 20), plan(5, "t3", 40)
    async with shop_site(worker.url) as site, browser(tmp_path, site) as tab:
        await tab.open("/shop")
        await tab.track(before)
        await tab.drained(timeout_s=10)
        await tab.offline(True)
        assert await tab.js("navigator.onLine") is False
        for part in chunks(during, 10):  # 4 s offline: two flush intervals pass
            await tab.track(part)
            await asyncio.sleep(1.0)
        assert await tab.queued() == len(during)  # nothing sent, nothing lost
        stored = await tab.js("Object.keys(localStorage).filter(k => k.startsWith('pulse.q.'))")
        queue = json.loads(await tab.js(f"localStorage.getItem({json.dumps(stored[0])})"))
        assert [x["e"]["event_id"] for x in queue] == [c.event_id for c in during]
        await tab.offline(False)
        took = await tab.drained(timeout_s=10)
        problems = tab.cdp.problems()
    assert problems == [], "the page logged problems:\n" + "\n".join(problems)
    assert took < 5, f"the queue took {took:.1f} s to drain once back online"
    sent = await assert_counted_once(worker.env, before + during)
    assert max(sent.copies.values()) == 1, sent.copies


async def test_large_queue_leaves_in_beacons_under_64_kib_without_random_uuid(
    worker: Worker, tmp_path
) -> None:
    calls = plan(6, "t6", 300, pad=300)  # about 200 KB of events
    quiet = json.dumps({"batchSize": 1000, "flushInterval": 600_000})  # sends only on hide
    async with (
        shop_site(worker.url) as site,
        browser(tmp_path, site, before_load=NO_RANDOM_UUID) as tab,
    ):
        await tab.open(f"/shop?o={quiet}")
        assert await tab.js("typeof crypto.randomUUID") == "undefined"
        await tab.track(calls)
        assert await tab.queued() == len(calls)
        assert await tab.js("window.__randomValues") >= len(calls)
        assert all(UUID4.match(c.event_id) for c in calls)
        assert UUID4.match(await tab.js("Pulse.anonymousId"))
        await tab.open("/away")
        beacons = json.loads(await tab.js("localStorage.getItem('test.beacons')"))
        accepted = [b for b in beacons if b["ok"]]
        # The queue is split into beacons of at most 32 KB. Chrome lets at most 64 KiB of
        # them be in flight, so it refuses the third; what is left stays queued.
        assert len(beacons) >= 3 and len(accepted) >= 2, beacons
        assert all(b["size"] < 64 * 1024 for b in beacons), beacons
        assert all(b["type"] == "text/plain;charset=utf-8" for b in beacons), beacons
        assert all(b["url"] == f"{worker.url}/v1/events?key={KEY}" for b in beacons), beacons
        await asyncio.sleep(2)
        events = await read_topic(worker.env["PULSE_KAFKA_BOOTSTRAP"], topic(worker.env, "events"))
        by_beacon = len(events)  # nothing else writes to this deployment's topic
        assert by_beacon > 0, beacons

        await tab.open("/shop")  # default options: the rest goes by fetch
        await tab.drained(timeout_s=30)
        problems = tab.cdp.problems()
    assert problems == [], "the page logged problems:\n" + "\n".join(problems)
    sent = await assert_counted_once(worker.env, calls)
    print(
        f"\n{len(calls)} events ({sum(len(orjson.dumps(e)) for e in sent.events.values())} bytes)"
        f" queued when the page was left: {len(beacons)} beacons of "
        f"{[b['size'] for b in beacons]} bytes, {len(accepted)} accepted carrying {by_beacon} "
        "events; the next page load sent the rest"
    )


async def test_broker_outage_is_ridden_out_by_retries(
    outage_broker: KafkaBroker,  # noqa: F811
    tmp_path: Path,
) -> None:
    chromium_path()
    env = deployment_env(outage_broker.bootstrap, tmp_path, **WINDOW)
    worker = Worker(env=env, log_path=tmp_path / "worker.log").start()
    calls: list[Call] = []
    stop = asyncio.Event()
    try:
        async with shop_site(worker.url) as site, browser(tmp_path, site) as tab:
            await tab.open("/shop")

            async def shopper() -> None:
                n = 0
                while not stop.is_set():
                    part = plan(100 + n, "t4", 3)
                    await tab.track(part)
                    calls.extend(part)
                    n += 1
                    await asyncio.sleep(0.5)

            task = asyncio.create_task(shopper())
            await asyncio.sleep(5)
            await asyncio.to_thread(outage_broker.stop, keep_data=True)
            down = time.monotonic()
            await asyncio.sleep(OUTAGE_S)  # the page keeps tracking
            queued_in_outage = await tab.queued()
            await asyncio.to_thread(outage_broker.start)
            up = time.monotonic()
            await asyncio.sleep(5)
            stop.set()
            await task
            took = await tab.drained(timeout_s=120)
            problems = tab.cdp.problems()
            network = list(tab.cdp.events)
        sent = await assert_counted_once(env, calls, timeout_s=120)
    finally:
        worker.stop()

    # Chromium itself logs every 503 answer; nothing else may show.
    unexpected = [
        p for p in problems if "responded with a status of 503 (Service Unavailable)" not in p
    ]
    assert unexpected == [], "the page logged problems:\n" + "\n".join(unexpected)
    answers = requests_to_collector(network)
    statuses = Counter(a[2] for a in answers)
    assert statuses[503] >= 1, statuses
    assert set(statuses) <= {202, 503}, statuses
    # Retry-After honoured: after a 503 the next attempt waits at least that long.
    waits = [
        (nxt[0] - ans[1], float(ans[3]))
        for ans, nxt in itertools.pairwise(answers)
        if ans[2] == 503 and ans[3]
    ]
    assert waits and all(w >= r - 0.05 for w, r in waits), waits
    print(
        f"\noutage {OUTAGE_S:.0f}s: {len(calls)} events tracked, {queued_in_outage} queued at its "
        f"end; {statuses[503]} x 503, {statuses[202]} x 202; queue drained {took:.1f}s after "
        f"tracking stopped ({time.monotonic() - up:.0f}s after the broker was back, "
        f"{up - down:.0f}s after it went down); {sum(sent.copies.values()) - len(calls)} "
        "re-sent copies absorbed by dedup"
    )


def requests_to_collector(
    events: list[dict[str, Any]],
) -> list[tuple[float, float, int, str | None]]:
    """(sent, answered, status, Retry-After) of each POST /v1/events, from DevTools events."""
    sent: dict[str, float] = {}
    out = []
    for ev in events:
        p = ev.get("params", {})
        if ev.get("method") == "Network.requestWillBeSent":
            if "/v1/events" in p["request"]["url"] and p["request"]["method"] == "POST":
                sent[p["requestId"]] = p["timestamp"]
        elif ev.get("method") == "Network.responseReceived" and p["requestId"] in sent:
            headers = {k.lower(): v for k, v in p["response"]["headers"].items()}
            out.append(
                (
                    sent[p["requestId"]],
                    p["timestamp"],
                    p["response"]["status"],
                    headers.get("retry-after"),
                )
            )
    return sorted(out)
