"""``pulse deliver`` with vendor adapters: Braze, Customer.io and Klaviyo next to a webhook.

A real broker and a real ``pulse deliver`` process; one local aiohttp receiver
emulates the three vendor APIs (checking each one's auth header and body shape
and recording what it accepted) and a generic Standard Webhooks endpoint.
Braze answers its first request 503, Klaviyo its first 429 with Retry-After: 1,
Customer.io rejects one event once with a 400 (dead-lettered, then replayed).
"""

from __future__ import annotations

import asyncio
import base64
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from stream.core.adapters import customerio_event_id
from stream.core.privacy import erase_request
from stream.core.rules import CAMPAIGN_ACTIONS
from stream.tools.broker import KafkaBroker, free_port
from tests.integration.conftest import ROOT, deployment_env
from tests.integration.helpers import consume_all, produce
from tests.integration.test_deliver import NEW, Deliver, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

KEYS = {
    "PULSE_TEST_BRAZE_KEY": "braze-rest-key",
    "PULSE_TEST_CIO_SITE": "cio-site",
    "PULSE_TEST_CIO_KEY": "cio-key",
    "PULSE_TEST_KLAVIYO_KEY": "pk_test_123",
}
BRAZE_CAMPAIGNS = {"user.send_offer": "braze-offer", "user.send_reminder": "braze-reminder"}
ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")
N_OFFERS, N_REMINDERS, N_CAMPAIGN = 120, 30, 30
CIO_REJECTED = 5  # the offer Customer.io answers 400 once


class Vendors:
    """The three vendor APIs and a webhook; ``accepted[vendor]`` counts trigger ids per 2xx."""

    def __init__(self) -> None:
        self.webhook = Webhook(NEW)
        self.accepted: dict[str, Counter[str]] = {
            v: Counter() for v in ("braze", "customerio", "klaviyo", "webhook")
        }
        self.requests: Counter[str] = Counter()
        self.problems: list[str] = []
        self.braze_sizes: list[int] = []
        self.braze_failed: list[str] = []  # trigger ids of the request answered 503
        self.cio_requests: Counter[str] = Counter()
        self.told_to_wait: tuple[str, float] | None = None
        self.waited: float | None = None
        self.runner: web.AppRunner | None = None

    def problem(self, vendor: str, what: str) -> web.Response:
        self.problems.append(f"{vendor}: {what}")
        return web.Response(status=400, text=what)

    async def braze(self, request: web.Request) -> web.Response:
        self.requests["braze"] += 1
        first = self.requests["braze"] == 1  # decided before any await: requests overlap
        if request.headers.get("Authorization") != "Bearer braze-rest-key":
            return self.problem("braze", f"auth {request.headers.get('Authorization')}")
        body = await request.json()
        recipients = body.get("recipients") or []
        users = [r.get("external_user_id") for r in recipients]
        ids = [r.get("trigger_properties", {}).get("trigger_id") for r in recipients]
        actions = {r.get("trigger_properties", {}).get("action") for r in recipients}
        if not 1 <= len(recipients) <= 50 or len(set(users)) != len(users) or None in ids:
            return self.problem("braze", f"recipients {users}")
        if len(actions) != 1 or body.get("campaign_id") != BRAZE_CAMPAIGNS.get(actions.pop()):
            return self.problem("braze", f"campaign {body.get('campaign_id')}")
        self.braze_sizes.append(len(recipients))
        if first:
            self.braze_failed = ids
            return web.Response(status=503)
        self.accepted["braze"].update(ids)
        return web.json_response({"dispatch_id": "d1", "message": "success"}, status=201)

    async def customerio(self, request: web.Request) -> web.Response:
        self.requests["customerio"] += 1
        token = base64.b64encode(b"cio-site:cio-key").decode()
        if request.headers.get("Authorization") != f"Basic {token}":
            return self.problem("customerio", "auth")
        body = await request.json()
        data = body.get("data") or {}
        if set(body) != {"name", "data", "timestamp", "id"} or not ULID.match(body["id"]):
            return self.problem("customerio", f"body {sorted(body)}")
        if request.match_info["user"] != data.get("user_hint") or body["name"] != data["action"]:
            return self.problem("customerio", f"user {request.match_info['user']}")
        if (
            body["id"] != customerio_event_id(data)
            or body["timestamp"] != data["created_at"] // 1000
        ):
            return self.problem("customerio", "id or timestamp")
        self.cio_requests[data["trigger_id"]] += 1
        if data.get("n") == CIO_REJECTED and self.cio_requests[data["trigger_id"]] == 1:
            return web.json_response({"meta": {"error": "bad event"}}, status=400)
        self.accepted["customerio"][data["trigger_id"]] += 1
        return web.json_response({})

    async def klaviyo(self, request: web.Request) -> web.Response:
        self.requests["klaviyo"] += 1
        first = self.requests["klaviyo"] == 1
        h = request.headers
        if h.get("Authorization") != "Klaviyo-API-Key pk_test_123" or not h.get("revision"):
            return self.problem("klaviyo", "auth or revision")
        if h.get("Content-Type") != "application/vnd.api+json":
            return self.problem("klaviyo", f"content type {h.get('Content-Type')}")
        attrs = (await request.json())["data"]["attributes"]
        props = attrs["properties"]
        profile = attrs["profile"]["data"]["attributes"]
        if (
            profile != {"external_id": props["user_hint"]}
            or attrs["unique_id"] != props["trigger_id"]
        ):
            return self.problem("klaviyo", f"profile {profile}")
        if attrs["metric"]["data"]["attributes"]["name"] != props["action"]:
            return self.problem("klaviyo", "metric")
        if first:
            self.told_to_wait = (props["trigger_id"], time.monotonic())
            return web.json_response({}, status=429, headers={"Retry-After": "1"})
        if (
            self.told_to_wait
            and self.waited is None
            and self.told_to_wait[0] == props["trigger_id"]
        ):
            self.waited = time.monotonic() - self.told_to_wait[1]
        self.accepted["klaviyo"][props["trigger_id"]] += 1
        return web.Response(status=202)

    async def generic(self, request: web.Request) -> web.Response:
        self.requests["webhook"] += 1
        try:
            trigger = self.webhook.verify(await request.read(), dict(request.headers))
        except WebhookVerificationError:
            return self.problem("webhook", "bad signature")
        self.accepted["webhook"][trigger["trigger_id"]] += 1
        return web.Response(status=204)

    async def start(self, port: int) -> None:
        app = web.Application()
        app.router.add_post("/braze/campaigns/trigger/send", self.braze)
        app.router.add_post("/cio/api/v1/customers/{user}/events", self.customerio)
        app.router.add_post("/klaviyo/api/events", self.klaviyo)
        app.router.add_post("/hooks/generic", self.generic)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def trigger(n: int, action: str, user: str | None) -> dict[str, Any]:
    now = int(time.time() * 1000)
    target = {"campaign_id": f"c{n % 5}"} | ({"user_id": user} if user else {})
    params: dict[str, Any] = {"n": n, "user_hint": user}  # lets the receiver cross-check
    if action == "user.send_offer":
        params["offer"] = {"campaign_id": f"c{n % 3}"}
    return {
        "trigger_id": f"{action}:{n}:{now}",
        "action": action,
        "rule": "test",
        "target": target,
        "reason": f"test trigger {n}",
        "evidence": {"score": 0.9},
        "params": params,
        "created_at": now,
    }


def config_yaml(base: str) -> str:
    return f"""
endpoints:
  - url: {base}/hooks/generic
    actions: ["campaign.*"]
    secret: {NEW}
  - type: braze
    url: {base}/braze
    api_key: ${{PULSE_TEST_BRAZE_KEY}}
    campaign_id: braze-offer
    campaigns: {{user.send_reminder: braze-reminder}}
    linger: 0.5s
  - type: customerio
    url: {base}/cio
    site_id: ${{PULSE_TEST_CIO_SITE}}
    api_key: ${{PULSE_TEST_CIO_KEY}}
  - type: klaviyo
    url: {base}/klaviyo
    api_key: ${{PULSE_TEST_KLAVIYO_KEY}}
timeout: 5s
"""


async def test_adapters_batch_retry_and_keep_campaign_actions_on_the_webhook(
    kafka: KafkaBroker, tmp_path: Path
) -> None:
    port, metrics_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    config = tmp_path / "delivery.yaml"
    config.write_text(config_yaml(base))
    env = deployment_env(
        kafka.bootstrap, tmp_path, PULSE_DELIVERY=str(config), PULSE_DELIVERY_SCHEDULE="0.5s,1s,2s",
        PULSE_DELIVER_PORT=str(metrics_port), PULSE_WORKER_ID="adapters", **KEYS,
    )  # fmt: skip
    # the last 10 offers, produced a moment later, go to users who already had one
    offers = [trigger(n, "user.send_offer", f"u{n % (N_OFFERS - 10)}") for n in range(N_OFFERS)]
    reminders = [trigger(1000 + n, "user.send_reminder", f"r{n}") for n in range(N_REMINDERS)]
    campaign = [
        trigger(2000 + n, CAMPAIGN_ACTIONS[n % len(CAMPAIGN_ACTIONS)], None)
        for n in range(N_CAMPAIGN)
    ]
    no_user = trigger(3000, "user.send_reminder", None)
    user_ids = {t["trigger_id"] for t in offers + reminders}
    campaign_ids = {t["trigger_id"] for t in campaign}
    rejected_id = offers[CIO_REJECTED]["trigger_id"]
    vendors = Vendors()
    await vendors.start(port)
    deliver = Deliver(env, tmp_path)
    try:
        await deliver.start()
        t0 = time.monotonic()
        topic = env["PULSE_TOPIC_PREFIX"] + "triggers"
        for batch in ([*offers[:-10], *reminders, *campaign, no_user], offers[-10:]):
            records = [(t["target"]["campaign_id"].encode(), orjson.dumps(t)) for t in batch]
            await produce(kafka.bootstrap, topic, records)
            await asyncio.sleep(0.3)

        def all_in() -> bool:
            a = vendors.accepted
            return (
                set(a["braze"]) == user_ids
                and set(a["klaviyo"]) == user_ids
                and set(a["customerio"]) == user_ids - {rejected_id}
                and set(a["webhook"]) == campaign_ids
            )

        await wait_until(all_in, 45, "every trigger at its vendors", deliver.tail)
        delivered_s = time.monotonic() - t0
        dlq_topic = env["PULSE_TOPIC_PREFIX"] + "triggers.dlq"
        dlq: list[dict[str, Any]] = []
        deadline = time.monotonic() + 20
        while len(dlq) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            dlq = [orjson.loads(v) for _, v in await consume_all(kafka.bootstrap, dlq_topic)]
        await asyncio.sleep(1.0)  # nothing more arrives
        metrics = deliver.metrics()

        assert vendors.problems == []
        # every trigger accepted exactly once by each of its vendors, none anywhere else
        for vendor in ("braze", "customerio", "klaviyo", "webhook"):
            assert set(vendors.accepted[vendor].values()) == {1}, vendor
        # Braze: requests of at most 50 recipients (checked by the receiver); the burst of
        # 120 offers filled whole ones; the 503'd batch's triggers came back in later ones
        assert max(vendors.braze_sizes) == 50 and len(vendors.braze_sizes) <= 15
        assert vendors.braze_failed and set(vendors.braze_failed) <= set(vendors.accepted["braze"])
        # Customer.io and Klaviyo: one request per trigger (plus the 400 and the 429)
        assert vendors.requests["customerio"] == len(user_ids)
        assert vendors.requests["klaviyo"] == len(user_ids) + 1
        assert vendors.waited is not None and vendors.waited >= 0.95  # Retry-After: 1
        # campaign-level triggers went to the webhook only
        assert vendors.requests["webhook"] == N_CAMPAIGN

        reasons = sorted((r["endpoint"].rsplit("/", 1)[-1], r["reason"]) for r in dlq)
        assert reasons == [
            ("braze", "rejected"), ("cio", "rejected"), ("cio", "rejected"),
            ("klaviyo", "rejected"),
        ], dlq  # fmt: skip
        by_id = {(r["trigger"]["trigger_id"], r["endpoint"]): r for r in dlq}
        assert by_id[(rejected_id, f"{base}/cio")]["last_status"] == 400
        for url in (f"{base}/braze", f"{base}/cio", f"{base}/klaviyo"):
            status = by_id[(no_user["trigger_id"], url)]["last_status"]
            assert "target.user_id is missing" in status, status

        outcomes = Counter[str]()
        for (name, labels), value in metrics.items():
            if name == "pulse_deliveries_total":
                outcomes[dict(labels)["outcome"]] += int(value)
        assert outcomes["delivered"] == 3 * len(user_ids) - 1 + N_CAMPAIGN
        assert outcomes["dead_lettered"] == 4
        assert outcomes["retried"] == len(vendors.braze_failed) + 1

        def replay(action: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "stream.cli", "deliver", "replay", "--from-dlq",
                 "--action", action],
                env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
            )  # fmt: skip

        requests_before = sum(vendors.requests.values())
        bad = await asyncio.to_thread(replay, "user.send_reminder")  # the trigger with no user
        assert bad.returncode == 1 and "0 delivered, 3 failed" in bad.stdout, bad.stdout
        assert "invalid trigger: target.user_id is missing" in bad.stdout
        assert sum(vendors.requests.values()) == requests_before  # no request for it
        good = await asyncio.to_thread(replay, "user.send_offer")
        assert good.returncode == 0 and "1 delivered, 0 failed" in good.stdout, good.stdout
        assert vendors.accepted["customerio"][rejected_id] == 1
        # once its user is erased, the dead-lettered offer is not sent again
        (offer,) = [r["trigger"] for r in dlq if r["trigger"]["trigger_id"] == rejected_id]
        key, request = erase_request(
            offer["target"]["user_id"], "", env["PULSE_APP_ID"], "erase-1", int(time.time() * 1000)
        )
        await produce(
            kafka.bootstrap, env["PULSE_TOPIC_PREFIX"] + "erasures", [(key.encode(), request)]
        )
        requests_before = sum(vendors.requests.values())
        gone = await asyncio.to_thread(replay, "user.send_offer")
        assert gone.returncode == 0 and "1 skipped (user erased)" in gone.stdout, gone.stdout
        assert "replayed 0 dead-lettered triggers" in gone.stdout, gone.stdout
        assert sum(vendors.requests.values()) == requests_before

        print(
            f"\nadapters: {len(user_ids)} user-level triggers to Braze, Customer.io and Klaviyo "
            f"and {N_CAMPAIGN} campaign-level to the webhook, all in {delivered_s:.1f}s; "
            f"Braze requests (recipients): {vendors.braze_sizes} (the first answered 503: "
            f"{len(vendors.braze_failed)} retried); Customer.io {vendors.requests['customerio']} "
            f"requests, Klaviyo {vendors.requests['klaviyo']} (one 429, retried after "
            f"{vendors.waited:.2f}s); DLQ {reasons}; replay delivered the 400'd event"
        )
        code, took = await asyncio.to_thread(deliver.stop)
        assert code == 0 and took < 15, (code, took, deliver.tail())
    finally:
        await asyncio.to_thread(deliver.stop)
        await vendors.stop()
