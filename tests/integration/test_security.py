"""Pulse against a real broker whose client port is SASL_PLAINTEXT with SCRAM-SHA-512.

The broker is this module's own (SCRAM users bootstrapped at format time). A
worker with the right credentials runs events end to end (collector, agents,
pulse.metrics back through the topic followers) and every CLI client works;
anonymous clients are refused; wrong credentials end the command within seconds
with a message that says what to check, and never echo the password.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from stream.config import Settings
from stream.kafka.topics import security_problem
from stream.tools.broker import KafkaBroker, free_port, metadata_ready
from tests.integration.conftest import ROOT, Worker, deployment_env

pytestmark = [pytest.mark.integration, pytest.mark.kafka4]

USERS = {"alice": "alice-secret", "bob": "bob-secret"}
WRONG = "not-the-password"
AUTH = {"Authorization": "Bearer sec-key"}
#: "within seconds, not a hang": the bound on a refused command, CLI start-up included
REFUSAL_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def sasl_broker() -> Iterator[KafkaBroker]:
    version = os.environ.get("PULSE_TEST_KAFKA_VERSION") or None
    broker = KafkaBroker(port=free_port(), version=version, sasl_users=USERS)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def sasl_env(sasl_broker: KafkaBroker, tmp_path: Path) -> dict[str, str]:
    client = sasl_broker.client_env("alice")
    return deployment_env(
        client["PULSE_KAFKA_BOOTSTRAP"],
        tmp_path,
        **client,
        PULSE_WRITE_KEYS="sec-key",
        PULSE_PARTITIONS="2",
        PULSE_WINDOW="5s",
        PULSE_GRACE="1s",
    )


def pulse(
    env: dict[str, str], *args: str, timeout_s: float = 120
) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    return proc, time.monotonic() - start


def security(env: dict[str, str]) -> dict[str, object]:
    return Settings.from_env(env).kafka_client_kwargs()


async def read_topic(env: dict[str, str], name: str, expected: int) -> list[tuple[bytes, bytes]]:
    consumer = AIOKafkaConsumer(
        name,
        bootstrap_servers=env["PULSE_KAFKA_BOOTSTRAP"],
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **security(env),
    )
    await consumer.start()
    out: list[tuple[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + 60
        while len(out) < expected and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out.extend((r.key, r.value) for r in records)
    finally:
        await consumer.stop()
    return out


def ev(i: int) -> dict[str, object]:
    return {
        "event_id": f"s-{i}",
        "type": "view",
        "event_time": int(time.time() * 1000),
        "user_id": f"u-{i}",
        "campaign_id": "cmp-sec",
    }


async def test_worker_and_cli_with_credentials(sasl_env: dict[str, str], tmp_path: Path) -> None:
    worker = Worker(env=dict(sasl_env), log_path=tmp_path / "worker.log").start()
    try:
        # collector -> pulse.events -> agents (Faust consumer, producer, tables)
        async with httpx.AsyncClient(base_url=worker.url, timeout=30) as client:
            r = await client.post(
                "/v1/events", content=orjson.dumps([ev(i) for i in range(30)]), headers=AUTH
            )
            assert r.status_code == 202, r.text
        worker.wait_metric("pulse_events_total", 30)

        # closed windows -> pulse.metrics -> the metrics follower -> the query API
        deadline = time.monotonic() + 120
        views = 0
        while views < 30:
            assert time.monotonic() < deadline, f"views={views}; log:\n{worker.tail()}"
            found = httpx.get(f"{worker.url}/v1/campaigns/cmp-sec", timeout=5)
            if found.status_code == 200:
                views = sum(w["views"] for w in found.json()["recent"])
            await asyncio.sleep(0.5)
        assert views == 30

        # every CLI client, as another SCRAM user
        bob = dict(sasl_env, PULSE_KAFKA_USERNAME="bob", PULSE_KAFKA_PASSWORD=USERS["bob"])
        sim, _ = pulse(bob, "simulate", "--via", "kafka", "--rate", "50", "--duration", "2")
        assert sim.returncode == 0, sim.stderr
        sent = orjson.loads(sim.stdout)["sent"]
        assert sent > 0

        replay_file = tmp_path / "events.jsonl"
        replay_file.write_bytes(b"\n".join(orjson.dumps(ev(1000 + i)) for i in range(10)))
        rep, _ = pulse(bob, "replay", str(replay_file))
        assert rep.returncode == 0, rep.stderr
        worker.wait_metric("pulse_events_total", 30 + sent + 10)

        camp, _ = pulse(bob, "campaign", "set", "cmp-sec", "--cost-model", "cpc", "--cost", "0.5")
        assert camp.returncode == 0, camp.stderr
        records = await read_topic(sasl_env, sasl_env["PULSE_TOPIC_PREFIX"] + "campaigns", 1)
        assert [(k, orjson.loads(v)["cost"]) for k, v in records] == [(b"cmp-sec", 0.5)]
    finally:
        worker.stop()
    assert USERS["alice"] not in worker.tail(10**7), "the worker logged its Kafka password"


async def test_anonymous_client_is_refused(
    sasl_broker: KafkaBroker, sasl_env: dict[str, str]
) -> None:
    ready = sasl_broker.bootstrap, 5, sasl_broker.client_security()
    assert await asyncio.to_thread(metadata_ready, *ready)  # SCRAM login: metadata
    assert not await asyncio.to_thread(metadata_ready, sasl_broker.bootstrap, 5)  # anonymous
    producer = AIOKafkaProducer(bootstrap_servers=sasl_broker.bootstrap, request_timeout_ms=5000)
    with pytest.raises(KafkaConnectionError):
        await producer.start()
    await producer.stop()

    anonymous = {k: v for k, v in sasl_env.items() if not k.startswith("PULSE_KAFKA_")}
    anonymous["PULSE_KAFKA_BOOTSTRAP"] = sasl_broker.bootstrap
    problem = await security_problem(Settings.from_env(anonymous))
    assert problem is not None and "requires SASL" in problem

    proc, elapsed = pulse(anonymous, "worker", timeout_s=REFUSAL_TIMEOUT_S)
    assert proc.returncode != 0
    assert "PULSE_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT" in proc.stderr, proc.stderr
    print(f"\nanonymous `pulse worker` refused in {elapsed:.1f}s: {proc.stderr.strip()}")


@pytest.mark.parametrize(
    ("command", "user", "password"),
    [
        (("worker",), "alice", WRONG),
        (("worker",), "mallory", WRONG),
        (("simulate", "--via", "kafka", "--duration", "2"), "alice", WRONG),
    ],
    ids=["worker-wrong-password", "worker-unknown-user", "simulate-wrong-password"],
)
def test_wrong_credentials_fail_fast_with_a_clear_message(
    sasl_env: dict[str, str], command: tuple[str, ...], user: str, password: str
) -> None:
    env = dict(sasl_env, PULSE_KAFKA_USERNAME=user, PULSE_KAFKA_PASSWORD=password)
    proc, elapsed = pulse(env, *command, timeout_s=REFUSAL_TIMEOUT_S)  # a hang fails here
    assert proc.returncode != 0
    assert "SASL authentication failed" in proc.stderr, proc.stderr
    assert "PULSE_KAFKA_USERNAME and PULSE_KAFKA_PASSWORD" in proc.stderr
    assert password not in proc.stdout + proc.stderr
    print(f"\n`pulse {command[0]}` as {user!r} refused in {elapsed:.1f}s: {proc.stderr.strip()}")
