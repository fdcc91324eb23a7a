"""Restart in seconds: a SIGKILLed worker's successor takes its partitions back at once.

Static group membership (``PULSE_WORKER_ID``, KIP-345): the restarted worker
joins with the killed one's instance id, so the coordinator hands it the same
partitions without waiting for the dead member's session to time out (Faust's
default ``broker_session_timeout`` is 60 s, kept here). A clean stop leaves the
group explicitly (LeaveGroup v3), so the other worker takes over at once too.

"Processed" is read from outside, as the group's committed offsets reaching the
end of every partition of ``pulse.events``: a worker commits only what it
processed, and unlike ``pulse_events_total`` a record delivered again (offsets
not yet committed when a rebalance came) does not count twice. The moved
partitions have nothing committed yet, which is the case that stalled: records
the new owner fetched during its recovery were dropped by Faust and, without a
committed offset to seek back to, never read again
(``faust_internals.rewind_to_committed``).
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tests.integration.helpers import produce, topic

pytestmark = [pytest.mark.integration, pytest.mark.kafka4]

SESSION_TIMEOUT_S = 60  # Faust's default, not lowered: the point is not to wait for it
INFO = {"PULSE_LOG_LEVEL": "info"}  # worker-*.log in the tmp dir tell what happened
PARTITIONS = 4  # deployment_env's PULSE_PARTITIONS


def views(n: int) -> list[tuple[bytes, bytes]]:
    now = int(time.time() * 1000)
    out = []
    for i in range(n):
        user = f"u-{i}"
        e = {"event_id": uuid.uuid4().hex, "type": "view", "event_time": now, "user_id": user,
             "campaign_id": "c1"}  # fmt: skip
        out.append((user.encode(), orjson.dumps(e)))
    return out


def counted(worker) -> float:
    return worker.metric_sum("pulse_events_total")


async def wait_committed(bootstrap: str, group: str, name: str, timeout_s: float) -> dict[int, int]:
    """Wait until ``group`` committed every partition of ``name`` to its end; the lag left."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await admin.start()
    await consumer.start()
    tps = [TopicPartition(name, p) for p in range(PARTITIONS)]
    lag = {p: -1 for p in range(PARTITIONS)}
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            try:
                ends = await consumer.end_offsets(tps)
                done = await admin.list_consumer_group_offsets(group, partitions=tps)
            except Exception:  # the group may be between generations
                pass
            else:
                lag = {
                    tp.partition: ends[tp] - (max(done[tp].offset, 0) if tp in done else 0)
                    for tp in tps
                }
                if not any(lag.values()):
                    break
            await asyncio.sleep(0.1)
    finally:
        await consumer.stop()
        await admin.close()
    return lag


async def test_kill_9_then_restart_resumes_before_the_session_timeout(
    make_worker, worker_env, kafka
) -> None:
    events, group = topic(worker_env, "events"), worker_env["PULSE_APP_ID"]
    worker = make_worker()
    await produce(kafka.bootstrap, events, views(40))  # keys over every partition
    assert not any((await wait_committed(kafka.bootstrap, group, events, 30)).values())

    worker.stop(signal.SIGKILL)
    killed = time.monotonic()
    worker = make_worker()  # the same worker slot: the same static member id
    ready = time.monotonic() - killed  # /readyz answered 200
    await produce(kafka.bootstrap, events, views(40))
    while counted(worker) < 1 and time.monotonic() - killed < SESSION_TIMEOUT_S:
        time.sleep(0.05)
    first = time.monotonic() - killed
    lag = await wait_committed(kafka.bootstrap, group, events, SESSION_TIMEOUT_S)
    resumed = time.monotonic() - killed
    print(
        f"\nkill -9 -> restarted worker ready in {ready:.1f} s, first new event counted "
        f"{first:.1f} s and all committed {resumed:.1f} s after the kill "
        f"(session timeout {SESSION_TIMEOUT_S} s)"
    )
    assert not any(lag.values()), f"records not processed per partition: {lag}"
    assert counted(worker) >= 40, "the restarted worker counts every new event"
    assert resumed < SESSION_TIMEOUT_S / 2, "it did not wait for the dead member's session"


async def test_a_clean_stop_hands_partitions_over_at_once(make_worker, worker_env, kafka) -> None:
    events, group = topic(worker_env, "events"), worker_env["PULSE_APP_ID"]
    first, second = make_worker(**INFO), make_worker(**INFO)  # two slots: two static members
    sigterm = time.monotonic()
    first.stop()  # SIGTERM: leaves the group explicitly; returns once the process exited
    stopped = time.monotonic()
    await produce(kafka.bootstrap, events, views(40))  # half on the stopped one's partitions
    # Asking the worker for its count meanwhile, as a dashboard would, keeps its event loop
    # busy: without the fix the moved partitions stalled in most runs this way, in few without.
    while counted(second) < 40 and time.monotonic() - stopped < SESSION_TIMEOUT_S:
        time.sleep(0.1)
    left = SESSION_TIMEOUT_S - (time.monotonic() - stopped)
    lag = await wait_committed(kafka.bootstrap, group, events, max(left, 1))
    took = time.monotonic() - stopped
    print(
        f"\nclean stop -> the other worker processed and committed every partition "
        f"{time.monotonic() - sigterm:.1f} s after the SIGTERM, {took:.1f} s after the "
        f"stopped worker exited ({counted(second):.0f} events counted: records delivered "
        f"again count again)"
    )
    assert not any(lag.values()), f"records not processed per partition: {lag}"
    assert counted(second) >= 40
    assert took < SESSION_TIMEOUT_S / 2, "the stopped static member left the group"
