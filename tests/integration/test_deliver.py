"""``pulse deliver`` against a real receiver, killed twice, with one endpoint down throughout.

The receiver (aiohttp, in the test) verifies every request with the
``standardwebhooks`` library, fails a seeded share of requests (500, a timeout,
429 with Retry-After, a connection reset; at most twice per webhook-id) and
dedupes on webhook-id. A second endpoint, for ``campaign.pause`` only, refuses
connections until the replay at the end.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from stream.tools.broker import KafkaBroker, free_port
from tests.deploy.promql import dashboard_expressions
from tests.integration.conftest import ROOT, deployment_env
from tests.integration.helpers import consume_all, produce
from tests.integration.test_dashboards import Prometheus, has_data, prometheus_binary

#: kafka4: static group membership through kill -9, read_committed over aborted transactions
pytestmark = [pytest.mark.integration, pytest.mark.kafka4, pytest.mark.timeout(240)]

NEW = "whsec_" + base64.b64encode(b"pulse-test-new-secret-0123").decode()
OLD = "whsec_" + base64.b64encode(b"pulse-test-old-secret-0123").decode()
ACTIONS = ["campaign.pause", "campaign.alert", "user.send_offer", "campaign.decrease_bid"]
N_TRIGGERS = 240
BATCHES = 12
SCHEDULE = "0.5s,1s,2s,3s"  # 5 tries, at most 6.5 s of waits
TRIES = 5
TIMEOUT_S = 1.5  # the deliverer's request timeout; the receiver's slow answers take longer
DELIVERY_METRICS = {
    "pulse_deliveries_total",
    "pulse_delivery_latency_seconds",
    "pulse_delivery_attempts_total",
}


class Receiver:
    """Verifies, fails a seeded share, dedupes on webhook-id; records what it saw."""

    def __init__(self, secret: str, seed: int, fail_share: float) -> None:
        self.webhook = Webhook(secret)
        self.rng = random.Random(seed)
        self.fail_share = fail_share
        self.requests = 0
        self.bad_signatures = 0
        self.duplicates = 0
        self.accepted: dict[str, float] = {}  # webhook-id -> accepted at (epoch s)
        self.created: dict[str, int] = {}
        self.failures: Counter[str] = Counter()
        self.failed_ids: Counter[str] = Counter()
        self.requests_by_id: Counter[str] = Counter()
        self.in_flight = self.max_in_flight = 0
        self.told_to_wait: dict[str, float] = {}  # webhook-id -> when a 429 said Retry-After: 1
        self.waited: list[float] = []  # seconds from such a 429 to the next request of the id
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._handle(request)
        finally:
            self.in_flight -= 1

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = await request.read()
        try:
            trigger = self.webhook.verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.bad_signatures += 1
            return web.Response(status=401)
        msg_id = request.headers["webhook-id"]
        assert msg_id == trigger["trigger_id"]
        self.requests_by_id[msg_id] += 1
        if msg_id in self.told_to_wait:
            self.waited.append(time.time() - self.told_to_wait.pop(msg_id))
        if self.failed_ids[msg_id] < 2 and self.rng.random() < self.fail_share:
            self.failed_ids[msg_id] += 1
            kind = self.rng.choice(["500", "timeout", "429", "reset"])
            self.failures[kind] += 1
            if kind == "500":
                return web.Response(status=500)
            if kind == "429":
                self.told_to_wait[msg_id] = time.time()
                return web.Response(status=429, headers={"Retry-After": "1"})
            if kind == "timeout":
                await asyncio.sleep(TIMEOUT_S + 1)
                return web.Response(status=503)
            assert request.transport is not None
            request.transport.abort()  # connection reset, no response
            return web.Response(status=500)
        if msg_id in self.accepted:
            self.duplicates += 1
            return web.Response(status=200)
        self.accepted[msg_id] = time.time()
        self.created[msg_id] = trigger["created_at"]
        return web.Response(status=204)

    async def start(self, port: int) -> None:
        app = web.Application()
        app.router.add_post("/hooks/{name}", self.handle)
        self.runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def latencies(self, ids: set[str]) -> list[float]:
        return sorted(self.accepted[i] - self.created[i] / 1000 for i in ids if i in self.accepted)


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


class Deliver:
    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = int(env["PULSE_DELIVER_PORT"])
        self.starts = 0

    async def start(self) -> None:
        log = open(self.logs / f"deliver-{self.starts}.log", "ab")  # noqa: SIM115
        self.starts += 1
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "deliver"],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, f"pulse deliver exited:\n{self.tail()}"
                try:
                    r = await client.get(f"http://127.0.0.1:{self.port}/readyz")
                    if r.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        raise AssertionError(f"pulse deliver not ready:\n{self.tail()}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> tuple[int | None, float]:
        """SIGTERM; the exit code and the seconds it took."""
        t0 = time.monotonic()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return (self.proc.returncode if self.proc else None), time.monotonic() - t0

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        }

    def tail(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-3000:] for p in sorted(self.logs.glob("deliver-*.log"))
        )


def make_triggers(batch: int, per_batch: int) -> list[dict[str, Any]]:
    now = int(time.time() * 1000)
    out = []
    for i in range(per_batch):
        n = batch * per_batch + i
        action = ACTIONS[n % len(ACTIONS)]
        target: dict[str, str] = {"campaign_id": f"c{n % 7}"}
        if action.startswith("user."):
            target["user_id"] = f"u{n}"
        out.append(
            {
                "trigger_id": f"rule:{n}:{now}",
                "action": action,
                "rule": "rule",
                "target": target,
                "reason": f"test trigger {n}",
                "evidence": {"n": n},
                "params": {},
                "created_at": now,
            }
        )
    return out


async def produce_in_transaction(
    bootstrap: str, name: str, records: list[tuple[bytes, bytes]], commit: bool
) -> None:
    """As Pulse writes triggers: in a Kafka transaction, committed or aborted."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=f"test-deliver-{time.time_ns()}"
    )
    await producer.start()
    try:
        await producer.begin_transaction()
        for key, value in records:
            await (await producer.send(name, key=key, value=value))
        if commit:
            await producer.commit_transaction()
        else:
            await producer.abort_transaction()
    finally:
        await producer.stop()


async def wait_until(check: Any, timeout_s: float, what: str, tail: Any) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{tail()}")
        await asyncio.sleep(0.25)


async def test_deliver_through_failures_kills_and_a_down_endpoint(
    kafka: KafkaBroker, tmp_path: Path
) -> None:
    live_port, down_port, metrics_port = free_port(), free_port(), free_port()
    live_url = f"http://127.0.0.1:{live_port}/hooks/live"
    down_url = f"http://127.0.0.1:{down_port}/hooks/down"
    config = tmp_path / "delivery.yaml"
    config.write_text(
        orjson.dumps(
            {
                "endpoints": [
                    {"url": live_url, "actions": ["*"], "secrets": [NEW, OLD]},
                    {"url": down_url, "actions": ["campaign.pause"], "secret": NEW},
                ],
                "timeout": TIMEOUT_S,
                "concurrency": 8,
            }
        ).decode()
    )
    env = deployment_env(
        kafka.bootstrap,
        tmp_path,
        PULSE_DELIVERY=str(config),
        PULSE_DELIVERY_SCHEDULE=SCHEDULE,
        PULSE_DELIVER_PORT=str(metrics_port),
        PULSE_WORKER_ID="d0",
    )
    bootstrap = kafka.bootstrap
    triggers_topic = env["PULSE_TOPIC_PREFIX"] + "triggers"
    dlq_topic = env["PULSE_TOPIC_PREFIX"] + "triggers.dlq"
    live = Receiver(OLD, seed=14, fail_share=0.25)  # verifies with the old of two secrets
    await live.start(live_port)
    deliver = Deliver(env, tmp_path)
    binary = prometheus_binary()
    prom: Prometheus | None = None
    try:
        await deliver.start()
        if binary is not None:  # scrapes pulse deliver through the kills, for the panels
            (tmp_path / "prometheus").mkdir()
            prom = Prometheus(binary, f"127.0.0.1:{metrics_port}", tmp_path / "prometheus")
            prom.start()
            await asyncio.to_thread(prom.wait_target_up)
        t0 = time.monotonic()
        per_batch = N_TRIGGERS // BATCHES
        sent: list[dict[str, Any]] = []
        kills = 0
        for b in range(BATCHES):
            batch = make_triggers(b, per_batch)
            sent += batch
            records = [(t["target"]["campaign_id"].encode(), orjson.dumps(t)) for t in batch]
            if b % 2:  # half plainly, half in committed transactions (as the worker writes)
                await produce(bootstrap, triggers_topic, records)
            else:
                await produce_in_transaction(bootstrap, triggers_topic, records, commit=True)
            if b == 5:  # an aborted transaction: read_committed never sees its triggers
                aborted = make_triggers(100 + b, 10)
                for t in aborted:
                    t["trigger_id"] = "aborted:" + t["trigger_id"]
                    t["action"] = "campaign.pause"
                await produce_in_transaction(
                    bootstrap, triggers_topic,
                    [(b"c0", orjson.dumps(t)) for t in aborted], commit=False,
                )  # fmt: skip
            if b in (3, 7):  # kill -9 mid-run, restart at once
                await asyncio.sleep(0.3)
                deliver.kill()
                kills += 1
                await deliver.start()
            else:
                await asyncio.sleep(0.4)
        all_ids = {t["trigger_id"] for t in sent}
        pause_ids = {t["trigger_id"] for t in sent if t["action"] == "campaign.pause"}

        await wait_until(
            lambda: all_ids <= set(live.accepted), 90, "every trigger at the live endpoint",
            deliver.tail,
        )  # fmt: skip
        delivered_s = time.monotonic() - t0

        dead: dict[str, dict[str, Any]] = {}

        def dead_lettered() -> bool:
            return pause_ids <= set(dead)

        deadline = time.monotonic() + 60
        dlq_rows: list[dict[str, Any]] = []
        while not dead_lettered():
            assert time.monotonic() < deadline, f"DLQ incomplete\n{deliver.tail()}"
            dlq_rows = [orjson.loads(v) for _, v in await consume_all(bootstrap, dlq_topic)]
            dead = {r["trigger"]["trigger_id"]: r for r in dlq_rows}
            if not dead_lettered():
                await asyncio.sleep(1)
        dlq_s = time.monotonic() - t0
        final_metrics = deliver.metrics()

        # every DLQ record: the down endpoint, after the whole schedule, a network error
        assert {r["endpoint"] for r in dlq_rows} == {down_url}
        assert set(dead) == pause_ids
        assert len(dlq_rows) <= 2 * len(pause_ids)  # re-reads after kill -9 fork no chains
        for r in dlq_rows:
            assert r["reason"] == "exhausted" and r["attempts"] == TRIES, r
            assert str(r["last_status"]).startswith(("network", "circuit open")), r
            assert set(r) == {
                "trigger",
                "endpoint",
                "reason",
                "attempts",
                "last_status",
                "failed_at",
            }
            assert r["failed_at"] - r["trigger"]["created_at"] >= 1500  # waited its schedule
        assert live.bad_signatures == 0
        assert live.max_in_flight <= 8  # the endpoint's concurrency (a killed process's
        # requests end with its connections: the receiver cancels their handlers)
        assert set(live.accepted) == all_ids  # each webhook-id accepted exactly once (a dict)
        assert not any(i.startswith("aborted:") for i in live.requests_by_id)
        # Retry-After: 1 was honoured (a kill -9 may re-send a trigger sooner)
        assert live.waited and statistics.median(live.waited) >= 0.95, live.waited

        # the down endpoint does not delay the live endpoint's deliveries
        lat_pause = live.latencies(pause_ids)
        lat_other = live.latencies(all_ids - pause_ids)
        lat_all = live.latencies(all_ids)
        first_try = {i for i in all_ids if live.failed_ids[i] == 0}
        lat_first_pause = live.latencies(first_try & pause_ids)
        lat_first_other = live.latencies(first_try - pause_ids)
        p50_pause, p50_other = (
            statistics.median(lat_first_pause),
            statistics.median(lat_first_other),
        )
        assert p50_pause <= p50_other + 0.5, (p50_pause, p50_other)

        # replay the DLQ once the endpoint is up: --action that matches nothing first
        down = Receiver(NEW, seed=0, fail_share=0.0)
        await down.start(down_port)

        def replay_dlq(action: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "stream.cli", "deliver", "replay", "--from-dlq",
                 "--action", action],
                env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
            )  # fmt: skip

        try:
            none = await asyncio.to_thread(replay_dlq, "user.*")
            assert none.returncode == 0 and "replayed 0 " in none.stdout, none.stdout + none.stderr
            assert down.requests == 0
            replay = await asyncio.to_thread(replay_dlq, "campaign.*")
            assert replay.returncode == 0, replay.stdout + replay.stderr
            assert set(down.accepted) == pause_ids and down.bad_signatures == 0
            assert down.duplicates == 0  # DLQ repeats (a crash) are sent once
        finally:
            await down.stop()

        panels: list[str] = []
        if prom is not None:  # the Webhook delivery panels' PromQL on the real scrape
            await asyncio.sleep(2)
            for e in dashboard_expressions():
                if e.base_metrics & DELIVERY_METRICS:
                    answer = await asyncio.to_thread(prom.query, e.expr)
                    assert answer.get("status") == "success", (e.describe(), answer)
                    assert has_data(answer), f"{e.describe()}: no data for {e.expr}"
                    panels.append(e.describe())
            assert len(panels) >= 5, panels

        live_attempts = live.requests
        down_attempts = sum(r["attempts"] for r in dead.values())
        live_retries = sum(live.failures.values())  # each failed request is tried again
        down_retries = down_attempts - len(pause_ids)
        # requests whose answer the kills cut short (neither accepted, failed nor repeats)
        cut = live_attempts - len(all_ids) - live_retries - live.duplicates
        m_sum = Counter[str]()
        for (name, labels), value in final_metrics.items():
            if name == "pulse_deliveries_total":
                m_sum[dict(labels)["outcome"]] += int(value)
            if name == "pulse_delivery_attempts_total":
                m_sum["attempts"] += int(value)
        print(
            f"\ndelivery: {len(all_ids)} triggers ({len(pause_ids)} also to the down endpoint), "
            f"{kills} kill -9 of pulse deliver\n"
            f"  live endpoint: {live_attempts} attempts, {len(live.accepted)} accepted, "
            f"{live.duplicates} duplicates dropped by dedupe, 0 accepted twice, "
            f"{live.bad_signatures} bad signatures; injected failures {dict(live.failures)}; "
            f"at most {live.max_in_flight} requests in flight\n"
            f"  down endpoint: {down_attempts} attempts, {len(dead)} dead-lettered "
            f"({len(dlq_rows)} DLQ records), all after {TRIES} tries; replay delivered "
            f"{len(down.accepted)}\n"
            f"  retries: {live_retries} at the live endpoint, {down_retries} at the down one; "
            f"{live.duplicates} re-sent after being accepted (the duplicates), {cut} cut by "
            "the kills\n"
            f"  all delivered {delivered_s:.1f}s, DLQ complete "
            f"{dlq_s:.1f}s after the first trigger\n"
            f"  latency created->accepted (s): all p50 {pct(lat_all, 0.5):.2f} "
            f"p99 {pct(lat_all, 0.99):.2f}; campaign.pause p50 {pct(lat_pause, 0.5):.2f} "
            f"p99 {pct(lat_pause, 0.99):.2f}; others p50 {pct(lat_other, 0.5):.2f} "
            f"p99 {pct(lat_other, 0.99):.2f}; first-try only: pause p50 {p50_pause:.2f}, "
            f"others p50 {p50_other:.2f}\n"
            f"  last process's metrics (since its restart): {dict(m_sum)}\n"
            f"  Retry-After 1 s: next try after p50 {statistics.median(live.waited):.2f}s "
            f"(min {min(live.waited):.2f}s, {len(live.waited)} cases); 10 triggers of an "
            f"aborted transaction never sent\n"
            f"  dashboard delivery expressions with data on a real Prometheus: "
            + (f"{len(panels)}" if prom is not None else "skipped (no prometheus binary)")
        )
        assert m_sum["attempts"] > 0 and m_sum["delivered"] > 0
        code, took = await asyncio.to_thread(deliver.stop)
        print(f"  SIGTERM: pulse deliver exited {code} in {took:.1f}s")
        assert code == 0 and took < 15, (code, took, deliver.tail())
    finally:
        deliver.stop()
        if prom is not None:
            prom.stop()
        await live.stop()
        if os.environ.get("PULSE_TEST_KEEP_LOGS"):
            print(deliver.tail())


async def test_two_deliverers_share_the_partitions_and_hand_them_over(
    kafka: KafkaBroker, tmp_path: Path
) -> None:
    """Two `pulse deliver` processes split the partitions; one stops (SIGTERM) mid-run and
    the other takes its partitions over after the session timeout (a static member does
    not leave the group): every trigger is accepted, none twice."""
    port = free_port()
    config = tmp_path / "delivery.yaml"
    config.write_text(
        orjson.dumps(
            {"endpoints": [{"url": f"http://127.0.0.1:{port}/hooks/a", "actions": ["*"],
                            "secret": NEW}], "timeout": TIMEOUT_S}
        ).decode()
    )  # fmt: skip
    base = deployment_env(
        kafka.bootstrap, tmp_path, PULSE_DELIVERY=str(config), PULSE_DELIVERY_SCHEDULE=SCHEDULE
    )
    receiver = Receiver(NEW, seed=3, fail_share=0.2)
    await receiver.start(port)
    logs = [tmp_path / "a", tmp_path / "b"]
    for d in logs:
        d.mkdir()
    first, second = (
        Deliver(dict(base, PULSE_WORKER_ID=name, PULSE_DELIVER_PORT=str(free_port())), log)
        for name, log in zip(("a", "b"), logs, strict=True)
    )
    topic = base["PULSE_TOPIC_PREFIX"] + "triggers"
    try:
        await first.start()
        await second.start()
        sent: list[dict[str, Any]] = []
        for b in range(8):
            batch = make_triggers(b, 15)
            sent += batch
            await produce(
                kafka.bootstrap, topic,
                [(t["target"]["campaign_id"].encode(), orjson.dumps(t)) for t in batch],
            )  # fmt: skip
            if b == 3:
                # from a thread: the receiver runs on this event loop and keeps answering
                code, _ = await asyncio.to_thread(second.stop)
                assert code == 0, second.tail()
                stopped_at = time.monotonic()
            await asyncio.sleep(0.4)
        ids = {t["trigger_id"] for t in sent}
        await wait_until(
            lambda: ids <= set(receiver.accepted), 90, "every trigger accepted", first.tail
        )
        attempts = sum(
            v for (n, _), v in first.metrics().items() if n == "pulse_delivery_attempts_total"
        )
        handover_s = time.monotonic() - stopped_at
        print(
            f"\ntwo deliverers: {len(ids)} triggers, {receiver.requests} requests, "
            f"{receiver.duplicates} duplicates, {receiver.bad_signatures} bad signatures; "
            f"the remaining one made {attempts:.0f} attempts; all accepted {handover_s:.1f}s after "
            "the other stopped"
        )
        assert receiver.bad_signatures == 0 and set(receiver.accepted) == ids
        # a graceful stop and a rebalance let tries in flight end and commit: nothing twice
        assert receiver.duplicates == 0
    finally:
        first.stop()
        second.stop()
        await receiver.stop()
