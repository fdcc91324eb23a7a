"""A 30 s broker outage under live collector traffic, on a broker of its own.

While Kafka cannot acknowledge, ``POST /v1/events`` answers 503 with Retry-After
(never 202); after the broker comes back on the same ports and data dir, the
same worker process recovers by itself and every event that got a 202 is
counted exactly once. Clients retry each 503'd event with the same event_id, as
a tracker would, so some of them land twice on the topic: deduplication must
absorb that.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest

from stream.config import Settings
from stream.kafka.topics import ensure_topics
from stream.kafka.writer import EventWriter, KafkaUnavailable
from stream.tools.broker import KafkaBroker, free_port
from tests.integration.conftest import Worker, deployment_env
from tests.integration.helpers import consume_all, topic

pytestmark = [pytest.mark.integration, pytest.mark.kafka4]

AUTH = {"Authorization": "Bearer outage-key"}
OUTAGE_S = 30.0
CLIENTS = 3


@pytest.fixture(scope="module")
def outage_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    version = os.environ.get("PULSE_TEST_KAFKA_VERSION") or None
    data = tmp_path_factory.mktemp("outage-kafka")
    broker = KafkaBroker(port=free_port(), data_dir=data, version=version)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def outage_worker(outage_broker: KafkaBroker, tmp_path: Path) -> Iterator[Worker]:
    env = deployment_env(
        outage_broker.bootstrap,
        tmp_path,
        PULSE_WRITE_KEYS="outage-key",
        PULSE_GRACE="1h",  # events retried after the outage are not late
    )
    worker = Worker(env=env, log_path=tmp_path / "worker.log").start()
    yield worker
    worker.stop()


@dataclass
class Traffic:
    """What the trickle clients saw: (sent, answered, status, Retry-After) per request."""

    responses: list[tuple[float, float, int, str | None]] = field(default_factory=list)
    accepted: set[str] = field(default_factory=set)
    pending: list[dict[str, object]] = field(default_factory=list)
    sent: int = 0

    def event(self) -> dict[str, object]:
        if self.pending:
            return self.pending.pop(0)  # a tracker retries with the same event_id
        self.sent += 1
        return {
            "event_id": f"o-{self.sent}",
            "type": "view",
            "event_time": int(time.time() * 1000),
            "user_id": f"u-{self.sent % 50}",
            "campaign_id": f"cmp-{self.sent % 3}",
        }

    def accepted_after(self, t: float) -> int:
        return sum(1 for sent, _, status, _ in self.responses if status == 202 and sent >= t)


async def trickle(url: str, traffic: Traffic, stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        while not (stop.is_set() and not traffic.pending):
            event = traffic.event()
            sent = time.monotonic()
            try:
                r = await client.post("/v1/events", content=orjson.dumps(event), headers=AUTH)
            except httpx.HTTPError:
                traffic.responses.append((sent, time.monotonic(), 0, None))
                traffic.pending.append(event)
                await asyncio.sleep(1.0)
                continue
            retry_after = r.headers.get("Retry-After")
            traffic.responses.append((sent, time.monotonic(), r.status_code, retry_after))
            if r.status_code == 202:
                assert r.json()["accepted"] == 1, r.text
                traffic.accepted.add(str(event["event_id"]))
                await asyncio.sleep(0.25)
            elif r.status_code == 503:
                assert retry_after is not None and int(retry_after) >= 1, r.headers
                traffic.pending.append(event)
                await asyncio.sleep(min(float(retry_after), 5.0))
            else:
                raise AssertionError(f"unexpected {r.status_code}: {r.text}")


async def wait_for(condition: object, timeout_s: float, what: str) -> float:
    """Poll ``condition()`` until true; return the seconds it took."""
    start = time.monotonic()
    while not condition():  # type: ignore[operator]
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        await asyncio.sleep(0.25)
    return time.monotonic() - start


@pytest.mark.timeout(900)  # a 30 s outage plus generous waits on a shared 2-core machine
async def test_collector_and_worker_ride_out_a_broker_outage(
    outage_broker: KafkaBroker, outage_worker: Worker
) -> None:
    traffic = Traffic()
    stop = asyncio.Event()
    clients = [
        asyncio.create_task(trickle(outage_worker.url, traffic, stop)) for _ in range(CLIENTS)
    ]
    try:
        await wait_for(lambda: len(traffic.accepted) >= 20, 60, "20 events accepted before")
        await asyncio.to_thread(outage_broker.stop, keep_data=True)
        down = time.monotonic()  # from here until the restart below, Kafka is gone
        await asyncio.sleep(OUTAGE_S)  # the outage itself: traffic keeps coming meanwhile
        restarting = time.monotonic()
        await asyncio.to_thread(outage_broker.start)
        up = time.monotonic()
        collector_recovery = await wait_for(
            lambda: traffic.accepted_after(up) >= 1, 120, "a 202 after the restart"
        )
        accepted_by_then = len(traffic.accepted)
        while await asyncio.to_thread(outage_worker.metric_sum, "pulse_events_total") < (
            accepted_by_then
        ):  # the worker's consumer is back and has caught up with the collector
            assert time.monotonic() - up < 180, f"worker did not recover:\n{outage_worker.tail()}"
            await asyncio.sleep(0.25)
        worker_recovery = time.monotonic() - up
        await wait_for(lambda: traffic.accepted_after(up) >= 20, 120, "20 events accepted after")
    finally:
        stop.set()
        done, _ = await asyncio.wait(clients, timeout=180)
    for task in clients:
        assert task in done, "a trickle client did not finish"
        task.result()  # re-raise assertion errors from the clients

    # Answers given while the broker process was gone (1 s margin for an ack in flight
    # at its exit). A collector write waits up to PULSE_COLLECTOR_ACK_TIMEOUT (5 s) for
    # acks, so some of these requests were sent before the stop.
    during = [r for r in traffic.responses if down + 1 < r[1] < restarting]
    statuses = [status for _, _, status, _ in during]
    assert 503 in statuses, f"no 503 while the broker was down: {statuses}"
    waits = sorted(answered - sent for sent, answered, status, _ in during if status == 503)
    assert waits[-1] < 5 + 2.5, f"a 503 came later than the 5 s ack timeout: {waits[-5:]}"
    assert 202 not in statuses, f"202 while Kafka could not acknowledge: {statuses}"
    assert set(statuses) <= {503}, statuses  # the collector stayed up and answered

    # Every accepted event is on the topic; the worker (never restarted) counts each once.
    records = await consume_all(outage_broker.bootstrap, topic(outage_worker.env, "events"))
    ids = [orjson.loads(v)["event_id"] for _, v in records]
    assert set(ids) == traffic.accepted
    processed = await wait_for(
        lambda: (
            outage_worker.metric_sum("pulse_events_total")
            + outage_worker.metric_sum("pulse_events_duplicate_total")
            >= len(ids)
        ),
        180,
        f"the worker to process all {len(ids)} records",
    )
    assert outage_worker.metric_sum("pulse_events_total") == len(traffic.accepted)
    assert outage_worker.proc is not None and outage_worker.proc.poll() is None
    print(
        f"\noutage {OUTAGE_S:.0f}s (broker down {restarting - down:.1f}s, restart took "
        f"{up - restarting:.1f}s); during it: {statuses.count(503)} x 503, "
        f"{statuses.count(202)} x 202 (slowest 503 after {waits[-1]:.1f}s); "
        f"first 202 {collector_recovery:.1f}s after the broker "
        f"was ready; worker caught up {worker_recovery:.1f}s after it; "
        f"all {len(traffic.accepted)} accepted events counted once "
        f"({len(ids) - len(set(ids))} retried duplicates on the topic; "
        f"{processed:.1f}s after reading it); {len(traffic.responses)} requests in all, "
        f"{sum(1 for r in traffic.responses if r[2] == 503)} x 503"
    )


async def test_writer_gets_a_new_producer_id_when_an_outage_broke_its_sequence(
    outage_broker: KafkaBroker,
) -> None:
    """Writes in flight while the broker shuts down can leave a gap in the idempotent
    producer's sequence numbers (a batch expires with "leader not available"); aiokafka
    then answers every later write with OutOfOrderSequenceNumber. EventWriter swaps
    in a new producer, so writes go through again once the broker is back."""
    settings = Settings.from_env(
        {"PULSE_KAFKA_BOOTSTRAP": outage_broker.bootstrap, "PULSE_TOPIC_PREFIX": "w."}
    )
    await ensure_topics(settings)
    failures: list[str] = []
    # a short request timeout: batches expire within the outage, as they do in a long one
    async with EventWriter(settings, request_timeout_ms=3000) as writer:
        await writer.send_many([(b"k", b"before")])

        async def keep_writing(stopped: asyncio.Future[None]) -> None:
            i = 0
            while not stopped.done():
                i += 1
                try:
                    await writer.send_many([(f"k{i}".encode(), b"during")] * 5, timeout_s=3)
                except KafkaUnavailable as exc:
                    failures.append(repr(exc.__cause__))
                await asyncio.sleep(0.05)

        stopping = asyncio.ensure_future(asyncio.to_thread(outage_broker.stop, keep_data=True))
        await asyncio.gather(*(keep_writing(stopping) for _ in range(4)))
        down = asyncio.ensure_future(asyncio.sleep(8))  # fully down meanwhile
        await asyncio.gather(*(keep_writing(down) for _ in range(4)))
        await asyncio.to_thread(outage_broker.start)
        attempts = 0
        while True:  # the first write after the restart may find the broken sequence
            attempts += 1
            try:
                await writer.send_many([(b"k", b"after")])
                break
            except KafkaUnavailable as exc:
                assert attempts < 5, f"writes still fail after the restart: {exc!r}"
        for _ in range(5):
            await writer.send_many([(b"k", b"after")])  # and keep working
    assert failures, "no write failed while the broker was down"
    print(
        f"\nwriter: {len(failures)} failed writes in the outage, "
        f"{writer.resets} producer replacement(s), {attempts} attempt(s) after the restart"
    )
