"""Segment's own clients pointed at a real worker: every mapped event is counted exactly.

- ``segment-analytics-python`` (PyPI, the dev extra) and ``@segment/analytics-node``
  (npm, installed here once into ``~/.cache/pulse/npm``, not vendored) send the same
  kind of scenario: Promotion / Product Viewed and Clicked, Product Added, Order
  Completed (with and without a campaign), identify, alias, page and unmapped names.
  The window records (views, clicks, purchases, revenue and carts per campaign ×
  variant × channel, summed over the short windows) equal counts written by hand per
  call; the events topic holds exactly the mapped events; the unmapped names show in
  ``pulse_segment_unmapped_total{event}``.
- The paths those clients do not use (analytics.js's ``/v1/t`` ... ``/v1/b`` and
  ``/v1/track`` ...), posted in the exact shape analytics.js sends, and Segment's limits.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.integration.helpers import consume_all, records_by_key, topic

pytestmark = [pytest.mark.integration]

WRITE_KEY = "test-key"  # one of the keys deployment_env configures
# Event times start at "now": an idle partition's windows close on the wall clock at
# now - grace, so an older event could land in a closed window (late).
WINDOW_ENV = {
    "PULSE_WINDOW": "2s",
    "PULSE_GRACE": "3s",
    "PULSE_RATE_LIMIT": "100000",
    "PULSE_CURRENCY": "USD",  # the Segment orders' currency
}
NODE_PACKAGE = "@segment/analytics-node"
NODE_VERSION = "3.1.0"
NPM_CACHE = Path.home() / ".cache" / "pulse" / "npm" / f"segment-analytics-node-{NODE_VERSION}"
STEP_MS = 25  # event times 25 ms apart: the order survives per-request skew correction
COLUMNS = ("views", "clicks", "carts", "purchases", "revenue")


# --- the scenario: Segment calls, each with the window count it must add ------------------------


@dataclass
class Call:
    call: str  # track, identify, alias, page
    user: str
    event: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    anonymous: str | None = None
    previous: str | None = None
    #: (campaign, variant, channel, column, revenue) the call adds to the window records
    row: tuple[str, str, str, str, float] | None = None
    #: the Pulse event it becomes, as (type, user_id, campaign_id, item_id, previous_id)
    pulse: tuple[str, str, str | None, str | None, str | None] | None = None
    timestamp: str = ""


def scenario(tag: str) -> tuple[list[Call], Counter[str]]:
    """Calls for one client, with campaigns of their own (``tag``), and the unmapped names.

    Channels: ``email`` and ``search`` from the UTM medium, ``web`` from the library
    (analytics-python and analytics-node both map to web).
    """
    spring, summer, plain = f"{tag}-spring", f"{tag}-summer", f"{tag}-plain"
    email = {"campaign": {"medium": "email", "source": "newsletter"}}
    calls: list[Call] = []
    unmapped: Counter[str] = Counter()
    for i in range(8):
        user, variant = f"{tag}-u{i}", "AB"[i % 2]
        last_click: tuple[str, str, str] | None = None
        calls.append(
            Call(
                "identify",
                user,
                anonymous=f"{tag}-anon{i}",
                pulse=("identify", user, None, None, None),
            )
        )
        props = {"promotion_id": spring, "creative": variant, "name": "Spring sale"}
        calls.append(
            Call(
                "track",
                user,
                "Promotion Viewed",
                props,
                email,
                row=(spring, variant, "email", "views", 0),
                pulse=("view", user, spring, None, None),
            )
        )
        if i % 3 != 2:
            calls.append(
                Call(
                    "track",
                    user,
                    "Promotion Clicked",
                    props,
                    email,
                    row=(spring, variant, "email", "clicks", 0),
                    pulse=("click", user, spring, None, None),
                )
            )
            last_click = (spring, variant, "email")
        sku = f"sku-{i % 3}"
        calls.append(  # campaign from properties.campaign_id, channel from the medium
            Call(
                "track",
                user,
                "Product Viewed",
                {"product_id": sku, "campaign_id": summer, "variant_id": "X", "price": 9.5},
                {"campaign": {"name": "ignored-utm", "medium": "cpc"}},
                row=(summer, "X", "search", "views", 0),
                pulse=("view", user, summer, sku, None),
            )
        )
        calls.append(  # a product outside any campaign: an item view, no window
            Call(
                "track",
                user,
                "Product Viewed",
                {"product_id": "sku-x", "name": "Mat"},
                pulse=("view", user, None, "sku-x", None),
            )
        )
        if i % 2 == 0:  # campaign from the UTM campaign name
            calls.append(
                Call(
                    "track",
                    user,
                    "Product Clicked",
                    {"product_id": sku, "variant_id": "X"},
                    {"campaign": {"name": summer, "medium": "cpc"}},
                    row=(summer, "X", "search", "clicks", 0),
                    pulse=("click", user, summer, sku, None),
                )
            )
            last_click = (summer, "X", "search")
        if i % 4 == 0:
            calls.append(
                Call(
                    "track",
                    user,
                    "Product Added",
                    {"product_id": sku, "campaign_id": spring, "creative": variant, "quantity": 2},
                    email,
                    row=(spring, variant, "email", "carts", 0),
                    pulse=("add_to_cart", user, spring, sku, None),
                )
            )
        calls.append(
            Call(
                "track",
                user,
                "Product Added",
                {"sku": "sku-y"},
                pulse=("add_to_cart", user, None, "sku-y", None),
            )
        )
        if i % 3 == 0:  # no campaign: attributed to the user's last click
            assert last_click is not None
            revenue = 10.0 + i
            calls.append(
                Call(
                    "track",
                    user,
                    "Order Completed",
                    {
                        "order_id": f"{tag}-o{i}",
                        "revenue": revenue,
                        "currency": "USD",
                        "products": [{"product_id": sku, "quantity": 1, "price": revenue}],
                    },
                    row=(*last_click, "purchases", revenue),
                    pulse=("purchase", user, None, None, None),
                )
            )
        calls.append(Call("track", user, "Signed Up", {"plan": "free"}))
        unmapped["Signed Up"] += 1
        if i < 3:  # channel from the library: web
            calls.append(
                Call(
                    "track",
                    user,
                    "Promotion Viewed",
                    {"promotion_id": plain},
                    row=(plain, "", "web", "views", 0),
                    pulse=("view", user, plain, None, None),
                )
            )
    buyer = f"{tag}-u5"  # a purchase naming its campaign; total as the value
    calls.append(
        Call(
            "track",
            buyer,
            "Order Completed",
            {"order_id": f"{tag}-o99", "total": 7.5, "campaign_id": spring, "variant_id": "B"},
            email,
            row=(spring, "B", "email", "purchases", 7.5),
            pulse=("purchase", buyer, spring, None, None),
        )
    )
    calls.append(
        Call(
            "alias",
            f"{tag}-member-1",
            previous=f"{tag}-u1",
            pulse=("identify", f"{tag}-member-1", None, None, f"{tag}-u1"),
        )
    )
    calls.append(Call("page", f"{tag}-u2", event="Home"))
    unmapped["page"] += 1
    calls.append(Call("track", f"{tag}-u3", "Coupon Entered", {"coupon_id": "x"}))
    unmapped["Coupon Entered"] += 1
    start = int(time.time() * 1000)
    for n, c in enumerate(calls):
        c.timestamp = _iso(start + n * STEP_MS)
    return calls, unmapped


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def expected_rows(calls: list[Call]) -> dict[tuple[str, str, str], dict[str, float]]:
    out: dict[tuple[str, str, str], dict[str, float]] = defaultdict(
        lambda: dict.fromkeys(COLUMNS, 0)
    )
    for c in calls:
        if c.row is not None:
            cid, vid, ch, column, revenue = c.row
            out[(cid, vid, ch)][column] += 1
            out[(cid, vid, ch)]["revenue"] += revenue
    return dict(out)


# --- reading the worker's outputs ------------------------------------------------------------


def totals(records: dict[tuple[Any, ...], dict[str, Any]], prefix: str) -> dict:
    """Window records of the campaigns starting with ``prefix``, summed over windows."""
    out: dict[tuple[str, str, str], dict[str, float]] = defaultdict(
        lambda: dict.fromkeys(COLUMNS, 0)
    )
    for (cid, vid, ch, _), r in records.items():
        if cid.startswith(prefix):
            row = out[(cid, vid, ch)]
            for column in COLUMNS:
                row[column] += r[column]
    return {k: {c: round(v, 6) for c, v in row.items()} for k, row in out.items()}


async def settled_rows(
    kafka: Any, env: dict[str, str], prefix: str, want: dict, timeout_s: float = 45
) -> tuple[dict, dict]:
    """Poll the window records until their sums equal ``want``, then read once more after
    3 s (a repeated window would show). Returns (sums, expected), rounded alike."""
    want = {k: {c: round(row[c], 6) for c in COLUMNS} for k, row in want.items()}
    deadline = time.monotonic() + timeout_s
    while True:
        got = totals(
            records_by_key(await consume_all(kafka.bootstrap, topic(env, "metrics"))), prefix
        )
        if got == want:
            await asyncio.sleep(3)  # records_by_key fails on a repeated window
            raw = await consume_all(kafka.bootstrap, topic(env, "metrics"))
            return totals(records_by_key(raw), prefix), want
        if time.monotonic() > deadline:
            return got, want
        await asyncio.sleep(1)


async def pulse_events(kafka: Any, env: dict[str, str], prefix: str) -> list[dict[str, Any]]:
    raw = await consume_all(kafka.bootstrap, topic(env, "events"))
    out = []
    for _, value in raw:
        e = orjson.loads(value)
        if str(e.get("user_id") or e.get("anonymous_id") or "").startswith(prefix):
            out.append(e)
    return out


def signature(e: dict[str, Any]) -> tuple[Any, ...]:
    return (
        e["type"],
        e.get("user_id"),
        e.get("campaign_id"),
        e.get("item_id"),
        e.get("previous_id"),
    )


async def check_outputs(
    worker: Any, kafka: Any, env: dict[str, str], tag: str, calls: list[Call], unmapped: Counter
) -> None:
    """Window sums, the events topic and the unmapped counter all match the scenario."""
    prefix = f"{tag}-"
    got, want = await settled_rows(kafka, env, prefix, expected_rows(calls))
    assert got == want, f"window sums differ:\n got {got}\nwant {want}\nlog:\n{worker.tail()}"

    events = await pulse_events(kafka, env, prefix)
    expected = Counter(c.pulse for c in calls if c.pulse is not None)
    assert Counter(signature(e) for e in events) == expected
    assert len({e["event_id"] for e in events}) == len(events)  # one messageId each

    for name, n in unmapped.items():
        assert worker.metric("pulse_segment_unmapped_total", event=name) == n, name
    dlq = await consume_all(kafka.bootstrap, topic(env, "events.dlq"))
    mine = [d for _, d in dlq if prefix.encode() in d]
    assert not mine, f"scenario messages in the DLQ: {mine[:3]}"


# --- 1. segment-analytics-python -------------------------------------------------------------


async def test_analytics_python_client(make_worker, worker_env, kafka) -> None:
    from segment.analytics import Client

    worker = make_worker(**WINDOW_ENV)
    env = dict(worker_env, **WINDOW_ENV)
    calls, unmapped = scenario("py")
    errors: list[str] = []
    client = Client(
        WRITE_KEY,
        host=worker.url,
        gzip=True,  # analytics-python's option: Content-Encoding gzip
        upload_size=25,  # several /v1/batch requests
        max_retries=2,
        on_error=lambda exc, batch: errors.append(f"{exc!r} ({len(batch)} messages)"),
    )
    for c in calls:
        ts = datetime.fromisoformat(c.timestamp)
        if c.call == "track":
            client.track(c.user, c.event, c.properties, context=c.context, timestamp=ts)
        elif c.call == "identify":
            client.identify(c.user, {"plan": "pro"}, anonymous_id=c.anonymous, timestamp=ts)
        elif c.call == "alias":
            client.alias(c.previous, c.user, timestamp=ts)
        elif c.call == "page":
            client.page(
                c.user, name=c.event, properties={"url": "https://shop.example/"}, timestamp=ts
            )
    await asyncio.to_thread(client.shutdown)
    assert not errors, errors
    await check_outputs(worker, kafka, env, "py", calls, unmapped)


# --- 2. @segment/analytics-node --------------------------------------------------------------

NODE_SCRIPT = r"""
const fs = require('fs')
const { Analytics } = require(process.env.SEGMENT_NODE_MODULE)
const calls = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'))
const analytics = new Analytics({
  writeKey: process.env.WRITE_KEY, host: process.env.HOST, flushAt: 20, flushInterval: 200,
  maxRetries: 2,
})
const problems = []
const statuses = []
analytics.on('error', (err) => problems.push(String((err && (err.reason || err.code)) || err)))
analytics.on('http_response', (res) => statuses.push(res.status))
for (const c of calls) {
  const timestamp = new Date(c.timestamp)
  if (c.call === 'track') {
    analytics.track({
      userId: c.user, event: c.event, properties: c.properties, context: c.context, timestamp,
    })
  } else if (c.call === 'identify') {
    analytics.identify({
      userId: c.user, anonymousId: c.anonymous, traits: { plan: 'pro' }, timestamp,
    })
  } else if (c.call === 'alias') {
    analytics.alias({ userId: c.user, previousId: c.previous, timestamp })
  } else if (c.call === 'page') {
    analytics.page({
      userId: c.user, name: c.event, properties: { url: 'https://shop.example/' }, timestamp,
    })
  }
}
analytics.closeAndFlush({ timeout: 30000 }).then(() => {
  console.log(JSON.stringify({ statuses, problems }))
  process.exit(problems.length ? 1 : 0)
})
"""


def node_client() -> Path:
    """``@segment/analytics-node`` installed once under ~/.cache/pulse/npm; its module path."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            "node and npm are needed for @segment/analytics-node: run `make deps` "
            "(it installs nodejs and npm when missing)",
            pytrace=False,
        )
    module = NPM_CACHE / "node_modules" / "@segment" / "analytics-node"
    if not (module / "package.json").exists():
        NPM_CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                npm,
                "install",
                "--prefix",
                str(NPM_CACHE),
                "--no-audit",
                "--no-fund",
                f"{NODE_PACKAGE}@{NODE_VERSION}",
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
    assert json.loads((module / "package.json").read_text())["version"] == NODE_VERSION
    return module


async def test_analytics_node_client(make_worker, worker_env, kafka, tmp_path: Path) -> None:
    module = node_client()
    worker = make_worker(**WINDOW_ENV)
    env = dict(worker_env, **WINDOW_ENV)
    calls, unmapped = scenario("node")
    script, data = tmp_path / "send.js", tmp_path / "calls.json"
    script.write_text(NODE_SCRIPT)
    data.write_text(json.dumps([c.__dict__ for c in calls]))
    run_env = dict(
        os.environ, SEGMENT_NODE_MODULE=str(module), WRITE_KEY=WRITE_KEY, HOST=worker.url
    )
    done = await asyncio.to_thread(
        subprocess.run,
        ["node", str(script), str(data)],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["statuses"] and set(report["statuses"]) == {200}, report
    await check_outputs(worker, kafka, env, "node", calls, unmapped)


# --- 3. analytics.js's request shape on every path -------------------------------------------
# The shape comes from analytics.js's published source (github.com/segmentio/analytics-next,
# packages/browser/src/plugins/segmentio/, read at 0c4fa881, @segment/analytics-next 1.84.1):
# - index.ts: each call is posted to `${apiHost}/${type.charAt(0)}` (/v1/t, /v1/p, /v1/i,
#   /v1/a, /v1/s, /v1/g); track messages lose `traits`; alias gets previousId/userId.
# - normalize.ts: the body is the event with `writeKey`, `userId` (null when anonymous),
#   `anonymousId`, `sentAt: new Date()` and `_metadata` {bundled, unbundled, bundledIds}.
# - shared-dispatcher.ts createHeaders: `Content-Type: text/plain` (no CORS preflight).
# - fetch-dispatcher.ts / batched-dispatcher.ts: `Authorization: Basic base64(writeKey:)` is
#   added since 65951526 (2026-04-17); earlier releases sent the key in the body only,
#   which is what the requests marked `body_key_only` below reproduce. The batching
#   dispatcher posts `${apiHost}/b` with `{writeKey, batch, sentAt}`, one sentAt per
#   request, after removing each event's own sentAt.
# messageId: `ajs-next-${Date.now()}-${uuid()}` (packages/browser/src/core/events/index.ts);
# context.library: {name: "analytics.js", version: "next-<version>"} (env-enrichment).


def ajs_event(kind: str, user: str | None, anon: str, t_ms: int, **fields: Any) -> dict[str, Any]:
    """One analytics.js message after normalize() (before the dispatcher)."""
    extra_context = fields.pop("context", {})
    event: dict[str, Any] = {
        "type": kind,
        **fields,
        "messageId": f"ajs-next-{t_ms}-{uuid.uuid4()}",
        "timestamp": _iso(t_ms),
        "integrations": {},
        "context": {
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/131.0.0.0",
            "locale": "en-US",
            "timezone": "Europe/Berlin",
            "library": {"name": "analytics.js", "version": "next-1.84.1"},
            "page": {
                "path": "/p/9",
                "referrer": "",
                "search": "",
                "title": "Mat",
                "url": "https://shop.example/p/9",
            },
            **extra_context,
        },
        "writeKey": WRITE_KEY,
        "userId": user,
        "anonymousId": anon,
        "sentAt": _iso(t_ms + 40),
        "_metadata": {"bundled": ["Segment.io"], "unbundled": [], "bundledIds": []},
    }
    return event


def ajs_post(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], body_key_only: bool = False
) -> Any:
    headers = {"Content-Type": "text/plain"}
    if not body_key_only:
        token = base64.b64encode(f"{body['writeKey']}:".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    return client.post(path, content=json.dumps(body), headers=headers)  # JSON.stringify


async def test_analytics_js_paths(make_worker, worker_env, kafka) -> None:
    worker = make_worker(**WINDOW_ENV)
    env = dict(worker_env, **WINDOW_ENV)
    t = int(time.time() * 1000)
    cmp, utm = "ajs-spring", {"campaign": {"name": "ajs-utm", "medium": "social"}}
    calls: list[tuple[str, dict[str, Any], bool]] = [
        (
            "/v1/t",
            ajs_event(
                "track",
                None,
                "ajs-anon1",
                t,
                event="Promotion Viewed",
                properties={"promotion_id": cmp, "creative": "A"},
            ),
            True,
        ),
        (
            "/v1/t",
            ajs_event(
                "track",
                None,
                "ajs-anon1",
                t + 50,
                event="Promotion Clicked",
                properties={"promotion_id": cmp, "creative": "A"},
            ),
            False,
        ),
        (
            "/v1/track",
            ajs_event(
                "track",
                "ajs-u1",
                "ajs-anon2",
                t + 100,
                event="Product Viewed",
                properties={"product_id": "sku-1"},
                context=utm,
            ),
            True,
        ),
        (
            "/v1/p",
            ajs_event(
                "page",
                None,
                "ajs-anon1",
                t + 150,
                name="Product",
                properties={"url": "https://shop.example/p/9"},
            ),
            True,
        ),
        (
            "/v1/page",
            ajs_event("page", "ajs-u1", "ajs-anon2", t + 200, name="Home", properties={}),
            False,
        ),
        ("/v1/s", ajs_event("screen", "ajs-u1", "ajs-anon2", t + 250, name="Cart"), False),
        ("/v1/screen", ajs_event("screen", "ajs-u1", "ajs-anon2", t + 300, name="Home"), True),
        (
            "/v1/i",
            ajs_event(
                "identify", "ajs-u9", "ajs-anon1", t + 350, traits={"email": "x@example.com"}
            ),
            True,
        ),
        ("/v1/identify", ajs_event("identify", "ajs-u1", "ajs-anon2", t + 400, traits={}), False),
        ("/v1/a", ajs_event("alias", "ajs-u9", "ajs-anon1", t + 450, previousId="ajs-anon1"), True),
        (
            "/v1/alias",
            ajs_event("alias", "ajs-member", "ajs-anon2", t + 500, previousId="ajs-u1"),
            False,
        ),
    ]
    batch = [
        ajs_event(
            "track",
            "ajs-u9",
            "ajs-anon1",
            t + 550,
            event="Product Added",
            properties={"product_id": "sku-1", "campaign_id": cmp, "creative": "A"},
        ),
        ajs_event(
            "track",
            "ajs-u9",
            "ajs-anon1",
            t + 600,
            event="Order Completed",
            properties={
                "order_id": "ajs-o1",
                "revenue": 30,
                "currency": "usd",
                "campaign_id": cmp,
                "creative": "A",
                "products": [{"product_id": "sku-1", "quantity": 1, "price": 30}],
            },
        ),
        ajs_event("track", "ajs-u9", "ajs-anon1", t + 650, event="Video Played", properties={}),
    ]
    for e in batch:  # batched-dispatcher.ts: no per-event sentAt, no per-event writeKey use
        del e["sentAt"]
    b_body = {"writeKey": WRITE_KEY, "batch": batch, "sentAt": _iso(t + 700)}
    async with httpx.AsyncClient(base_url=worker.url, timeout=30) as client:
        for path, body, body_key_only in calls:
            r = await ajs_post(client, path, body, body_key_only)
            assert (r.status_code, r.json()) == (200, {"success": True}), (path, r.text)
        for path in ("/v1/b", "/v1/batch"):
            r = await ajs_post(client, path, b_body, body_key_only=path == "/v1/b")
            assert (r.status_code, r.json()) == (200, {"success": True}), (path, r.text)

    # The batch went twice (/v1/b and /v1/batch) with the same messageIds: counted once.
    want = {
        (cmp, "A", "web"): {"views": 1, "clicks": 1, "carts": 1, "purchases": 1, "revenue": 30},
        # the Product Viewed's campaign is its UTM campaign name, its channel the medium
        ("ajs-utm", "", "social"): {
            "views": 1,
            "clicks": 0,
            "carts": 0,
            "purchases": 0,
            "revenue": 0,
        },
    }
    got, want = await settled_rows(kafka, env, "ajs-", want, timeout_s=30)
    assert got == want, f"window sums differ:\n got {got}\nwant {want}\nlog:\n{worker.tail()}"

    events = await pulse_events(kafka, env, "ajs-")
    assert Counter(signature(e) for e in events) == Counter(
        [
            ("view", None, cmp, None, None),
            ("click", None, cmp, None, None),
            ("view", "ajs-u1", "ajs-utm", "sku-1", None),
            ("identify", "ajs-u9", None, None, None),
            ("identify", "ajs-u1", None, None, None),
            ("identify", "ajs-u9", None, None, "ajs-anon1"),
            ("identify", "ajs-member", None, None, "ajs-u1"),
            ("add_to_cart", "ajs-u9", cmp, "sku-1", None),
            ("purchase", "ajs-u9", cmp, None, None),
            # the batch's repeat is written again and deduplicated by the worker
            ("add_to_cart", "ajs-u9", cmp, "sku-1", None),
            ("purchase", "ajs-u9", cmp, None, None),
        ]
    )
    by_type = {e["type"]: e for e in events}
    view = next(e for e in events if e["type"] == "view" and e.get("item_id") == "sku-1")
    assert view["channel"] == "social" and view["context"]["utm"]["name"] == "ajs-utm"
    assert view["context"]["timezone"] == "Europe/Berlin"
    assert by_type["purchase"]["currency"] == "USD" and by_type["purchase"]["revenue"] == 30
    assert by_type["purchase"]["sent_at"] == t + 700  # the batch's one sentAt
    assert worker.metric("pulse_events_duplicate_total") == 2  # Video Played is not written
    for name, n in {"page": 2, "screen": 2, "Video Played": 2}.items():
        assert worker.metric("pulse_segment_unmapped_total", event=name) == n, name


# --- 4. Segment's limits and answers ---------------------------------------------------------


async def test_limits_and_answers(make_worker, worker_env, kafka) -> None:
    worker = make_worker(**WINDOW_ENV)
    env = dict(worker_env, **WINDOW_ENV)
    t = int(time.time() * 1000)
    small = ajs_event(
        "track",
        "lim-u1",
        "lim-a1",
        t,
        event="Promotion Viewed",
        properties={"promotion_id": "lim-c"},
    )
    big = ajs_event(
        "track",
        "lim-u2",
        "lim-a2",
        t,
        event="Promotion Viewed",
        properties={"promotion_id": "lim-c", "blob": "x" * (32 * 1024)},
    )
    async with httpx.AsyncClient(base_url=worker.url, timeout=30) as client:
        r = await ajs_post(client, "/v1/batch", {"writeKey": WRITE_KEY, "batch": [big, small]})
        assert (r.status_code, r.json()) == (200, {"success": True})

        filler = [
            dict(small, messageId=f"f{i}", properties={"pad": "y" * 4000}) for i in range(130)
        ]
        huge = {"writeKey": WRITE_KEY, "batch": filler}
        assert len(json.dumps(huge)) > 500 * 1024
        r = await ajs_post(client, "/v1/batch", huge)
        assert r.status_code == 413, r.text

        bad = dict(small, writeKey="not-a-key")
        r = await client.post(
            "/v1/t", content=json.dumps(bad), headers={"Content-Type": "text/plain"}
        )
        assert r.status_code == 401, r.text
        token = base64.b64encode(b"not-a-key:").decode()
        r = await client.post(
            "/v1/batch", json={"batch": [small]}, headers={"Authorization": f"Basic {token}"}
        )
        assert r.status_code == 401, r.text

        r = await ajs_post(client, "/v1/batch", {"writeKey": WRITE_KEY, "event": "x"})
        assert r.status_code == 400 and "batch" in r.text, r.text
        r = await client.post("/v1/track", content=b"{not json", auth=(WRITE_KEY, ""))
        assert r.status_code == 400, r.text

    dlq = [orjson.loads(v) for _, v in await consume_all(kafka.bootstrap, topic(env, "events.dlq"))]
    assert [d["reason"] for d in dlq] == ["too_large"], dlq
    # the payload is the message without its writeKey, cut to the DLQ's 32 KB
    sent = {k: v for k, v in big.items() if k != "writeKey"}
    assert dlq[0]["payload"] == orjson.dumps(sent)[: 32 * 1024].decode()
    assert "32768" in dlq[0]["detail"] and WRITE_KEY not in dlq[0]["payload"]
    events = await pulse_events(kafka, env, "lim-")
    assert [e["event_id"] for e in events] == [small["messageId"]]
