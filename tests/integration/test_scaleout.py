"""Scale-out on the real broker: workers join and leave one group mid-stream, results stay exact.

Topics get 6 partitions. Two workers share one app id (one consumer group);
while a seeded stream is produced at a steady pace a third worker joins, and
later the first leaves with SIGTERM. ``pulse.metrics`` must equal the
reference aggregation exactly (each window once), and ``GET
/v1/campaigns/{id}`` must answer the same on every remaining worker.

The pause each rebalance causes is measured from outside: a sampler reads the
group's committed offsets on ``pulse.events`` every 0.25 s, and the pause is
the longest stretch after the membership change in which the committed total
did not move although records were waiting. It is printed, not asserted.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import threading
import time
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tests.integration.helpers import (
    campaign_stream,
    encode_events,
    final_records,
    stream_reference,
    topic,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka4]

SEED = 6060
PARTITIONS = 6
RATE = 300  # records per second produced
ENV = {
    "PULSE_PARTITIONS": str(PARTITIONS),
    "PULSE_WINDOW": "10s",
    "PULSE_GRACE": "20s",
    "PULSE_ATTRIBUTION_WINDOW": "1h",
    "BROKER_SESSION_TIMEOUT": "10",
    "BROKER_HEARTBEAT_INTERVAL": "1",
}

Sample = tuple[float, int, int]  # monotonic time, committed total, end offsets total


class PacedProducer(threading.Thread):
    """Produce records at ``rate`` per second from its own event loop."""

    def __init__(self, bootstrap: str, name: str, records: list[Any], rate: float) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.name, self.records, self.rate = bootstrap, name, records, rate
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._produce())
        except BaseException as exc:  # reported by the test
            self.error = exc

    async def _produce(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        try:
            t0 = time.monotonic()
            step = max(1, int(self.rate / 10))
            for i in range(0, len(self.records), step):
                futures = [
                    await producer.send(self.name, key=k, value=v)
                    for k, v in self.records[i : i + step]
                ]
                await asyncio.gather(*futures)
                self.sent = i + len(futures)
                await asyncio.sleep(max(0.0, t0 + self.sent / self.rate - time.monotonic()))
        finally:
            await producer.stop()


class GroupSampler(threading.Thread):
    """Sample the group's committed offsets and the end offsets of one topic."""

    def __init__(self, bootstrap: str, group: str, name: str) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.group, self.name = bootstrap, group, name
        self.samples: list[Sample] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        asyncio.run(self._sample())

    async def _sample(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap)
        await admin.start()
        await consumer.start()
        tps = [TopicPartition(self.name, p) for p in range(PARTITIONS)]
        try:
            while not self.stopped.is_set():
                try:
                    ends = await consumer.end_offsets(tps)
                    done = await admin.list_consumer_group_offsets(self.group, partitions=tps)
                    committed = sum(max(done[tp].offset, 0) for tp in tps if tp in done)
                    self.samples.append((time.monotonic(), committed, sum(ends.values())))
                except Exception:  # the group may be between generations
                    pass
                await asyncio.sleep(0.25)
        finally:
            await consumer.stop()
            await admin.close()


def pause_after(samples: list[Sample], start: float, span_s: float = 90) -> float:
    """Longest stretch in [start, start + span] with waiting records and no commit progress."""
    window = [s for s in samples if start <= s[0] <= start + span_s]
    longest, since = 0.0, None
    for (t, committed, end), (t_next, committed_next, _) in itertools.pairwise(window):
        stalled = committed_next == committed and end > committed
        if stalled and since is None:
            since = t
        if not stalled and since is not None:
            longest = max(longest, t - since)
            since = None
        if since is not None:
            longest = max(longest, t_next - since)
    return longest


def wait_until(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


async def test_workers_join_and_leave_mid_stream_results_stay_exact(
    make_worker, worker_env, kafka
) -> None:
    env = dict(worker_env, **ENV)
    events = campaign_stream(SEED)
    expected = stream_reference(events)
    records = encode_events(events)
    events_topic = topic(env, "events")

    first = make_worker(**ENV)
    second = make_worker(**ENV)
    sampler = GroupSampler(kafka.bootstrap, env["PULSE_APP_ID"], events_topic)
    producer = PacedProducer(kafka.bootstrap, events_topic, records, RATE)
    sampler.start()
    producer.start()
    try:
        wait_until(lambda: producer.sent >= len(records) // 4, 120, "a quarter of the stream")
        added_at = time.monotonic()
        third = make_worker(**ENV)
        joined_s = time.monotonic() - added_at
        wait_until(lambda: producer.sent >= len(records) * 2 // 3, 180, "two thirds of the stream")
        removed_at = time.monotonic()
        assert first.stop(signal.SIGTERM) == 0, first.tail()
        left_s = time.monotonic() - removed_at
        producer.join(300)
        assert producer.error is None and producer.sent == len(records), producer.error

        got = await final_records(
            kafka.bootstrap, topic(env, "metrics"), len(expected), timeout_s=180
        )
    finally:
        sampler.stopped.set()
        sampler.join(10)
    assert {k: [r["views"], r["clicks"], r["purchases"], r["revenue"]] for k, r in got.items()} == {
        k: [v[0], v[1], v[2], round(v[3], 6)] for k, v in expected.items()
    }

    def answers() -> list[Any]:
        return [
            httpx.get(f"{w.url}/v1/campaigns/{cid}", timeout=10).json()
            for cid in ("c-drop", "c1", "c2", "c3")
            for w in (second, third)
        ]

    def same_everywhere() -> bool:
        bodies = answers()
        pairs = list(zip(bodies[::2], bodies[1::2], strict=True))
        return all(a == b and a.get("campaign_id") for a, b in pairs)

    wait_until(same_everywhere, 60, "the same campaign answers on every worker")
    body = httpx.get(f"{second.url}/v1/campaigns/c-drop", timeout=10).json()
    views = sum(v[0] for k, v in expected.items() if k[0] == "c-drop")
    assert sum(w["views"] for w in body["recent"]) == views

    started_at = sampler.samples[0][0] if sampler.samples else added_at
    steady = pause_after(sampler.samples, started_at, added_at - started_at)
    add_pause = pause_after(sampler.samples, added_at)
    remove_pause = pause_after(sampler.samples, removed_at)
    print(
        f"scale-out: {len(records)} records over {PARTITIONS} partitions at {RATE}/s, "
        f"{len(got)} window records exact; longest commit stall before any change "
        f"{steady:.1f}s (commit interval 1 s); third worker ready {joined_s:.1f}s after start, "
        f"rebalance pause (no commit progress while records waited) {add_pause:.1f}s; "
        f"first worker left in {left_s:.1f}s (SIGTERM), pause {remove_pause:.1f}s; "
        f"{len(sampler.samples)} offset samples"
    )
