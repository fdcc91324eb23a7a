"""Crashes on the real broker: SIGKILL the worker again and again, nothing lost or doubled.

A seeded stream (views, clicks, purchases with and without a campaign, over
four campaigns, 14 windows of 10 s and 4 partitions, with about 3 % re-sent
duplicates) is produced in chunks. The first worker runs with the failpoint
``FAILPOINTS=merger-after-emit:2``: it SIGKILLs itself right after a merge
step's outputs are acknowledged and before the merger snapshot (the narrowest
gap, hit deterministically). With transactions those outputs were in the open
transaction: aborted, seen by ``read_uncommitted`` readers only; without, the
restarted merger must drop them as already sent. Then, after seeded chunks
and at seeded delays, the worker is killed with SIGKILL from outside and a new
one started (kills left over happen during the final drain). At the end ``pulse.metrics``
must hold exactly the reference aggregation (each window once, no loss, no
double count), and ``pulse.triggers`` exactly the campaign triggers of an
offline backtest of the same records: the same ``trigger_id`` and action,
none repeated.

The workers get ``BROKER_SESSION_TIMEOUT=10`` (Faust reads it from the
environment) so the group drops a killed member in 10 s instead of 60 s.
"""

from __future__ import annotations

import asyncio
import random
import signal
from pathlib import Path

import orjson
import pytest

from stream.config import Settings
from stream.tools.backtest import run_backtest
from tests.integration.helpers import (
    assert_exact,
    campaign_stream,
    consume_all,
    encode_events,
    final_records,
    produce,
    stream_reference,
    topic,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka4]

SEED = 20261123
CHUNKS = 14
KILLS = 6
FAILPOINT_EMITS = 2
ENV = {
    "PULSE_WINDOW": "10s",
    "PULSE_GRACE": "20s",  # events arrive in event-time order: none is late
    "PULSE_ATTRIBUTION_WINDOW": "1h",
    "BROKER_SESSION_TIMEOUT": "10",
    "BROKER_HEARTBEAT_INTERVAL": "1",
    "PULSE_LOG_LEVEL": "info",  # worker-*.log in the test's tmp dir tell what happened
}


async def test_sigkill_at_random_points_keeps_windows_and_triggers_exact(
    make_worker, worker_env, kafka, tmp_path: Path
) -> None:
    events = campaign_stream(SEED)
    expected = stream_reference(events)
    records = encode_events(events)
    rng = random.Random(SEED + 1)
    delays = [rng.choice([0.05, 0.3, 1.0, 2.0, 4.0]) * rng.random() for _ in range(CHUNKS + KILLS)]
    size = -(-len(records) // CHUNKS)
    env = dict(worker_env, **ENV)
    events_topic = topic(env, "events")

    # First the narrowest gap, deterministically: the merger dies right after a
    # step's window records and triggers are acknowledged, before its snapshot.
    worker = make_worker(**ENV, FAILPOINTS=f"merger-after-emit:{FAILPOINT_EMITS}")
    failpoint_at: int | None = None
    kill_after: set[int] = set()
    kills = 0

    def restart() -> None:
        nonlocal worker
        worker = make_worker(**ENV)

    for i in range(CHUNKS):
        await produce(kafka.bootstrap, events_topic, records[i * size : (i + 1) * size])
        await asyncio.sleep(delays[i])  # the worker is somewhere in its batches
        assert worker.proc is not None
        if failpoint_at is None:
            if worker.proc.poll() is not None:  # it killed itself at the failpoint
                assert worker.proc.returncode == -signal.SIGKILL, worker.tail()
                failpoint_at = i
                later = range(i + 1, CHUNKS)
                kill_after = set(rng.sample(later, min(KILLS, len(later))))
                restart()
            continue
        if i in kill_after:  # then SIGKILL from outside at seeded random points
            assert worker.proc.poll() is None, worker.tail()
            worker.stop(signal.SIGKILL)
            kills += 1
            restart()
    if failpoint_at is None:  # the last windows close on the wall clock: wait for it
        assert worker.proc is not None
        worker.proc.wait(120)
        assert worker.proc.returncode == -signal.SIGKILL, worker.tail()
        failpoint_at = CHUNKS
        restart()
    while kills < KILLS:  # kills left over: during the final drain and idle closing
        await asyncio.sleep(delays[CHUNKS + kills] * 3)
        worker.stop(signal.SIGKILL)
        kills += 1
        restart()

    got = await final_records(
        kafka.bootstrap, topic(worker_env, "metrics"), len(expected), timeout_s=180
    )
    summary = (
        f"crash test: 1 failpoint crash after chunk {failpoint_at} + {kills} SIGKILLs, "
        f"{len(records)} records produced "
        f"({len({e['event_id'] for e in events})} distinct events), "
        f"{len(expected)} window records expected, {len(got)} read"
    )
    print(summary)
    dlq = [orjson.loads(v) for _, v in await consume_all(kafka.bootstrap, topic(env, "events.dlq"))]
    assert [(d["reason"], d["detail"]) for d in dlq][:5] == [], "every event is valid and in time"
    assert_exact(got, expected)

    raw = await consume_all(kafka.bootstrap, topic(worker_env, "triggers"))
    sent = [orjson.loads(v) for _, v in raw]
    live = [t for t in sent if t["action"].startswith("campaign.")]
    ids = [t["trigger_id"] for t in live]
    assert len(ids) == len(set(ids)), f"a trigger was sent twice: {sorted(ids)}"

    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(v for _, v in records))
    offline_dir = tmp_path / "backtest"
    run_backtest(Settings.from_env(dict(worker_env, **ENV)), path, offline_dir, progress=False)
    offline = [
        orjson.loads(line) for line in (offline_dir / "triggers.jsonl").read_bytes().splitlines()
    ]
    offline_keys = sorted((t["trigger_id"], t["action"]) for t in offline)
    decisions = {(t["action"], t["target"]["campaign_id"]) for t in offline}
    assert ("campaign.pause", "c-drop") in decisions
    assert sorted((t["trigger_id"], t["action"]) for t in live) == offline_keys

    logs = "".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("worker-*.log")))
    assert "failpoint merger-after-emit fired" in logs
    if Settings.from_env(env).transactions:  # the cut step's outputs were aborted, not replayed
        aborted = await consume_all(
            kafka.bootstrap, topic(worker_env, "metrics"), isolation_level="read_uncommitted"
        )
        cut = len(aborted) - len(got)
        assert cut >= 1, "the failpoint fired after the step's window records were on the broker"
        note = f"window records of aborted transactions (unseen by read_committed): {cut}"
    else:  # ordered writes: the restarted merger drops the outputs it had sent
        repeats = logs.count("merger replay:")
        assert repeats >= 1, "the merger restarted after the failpoint dropped its repeats"
        note = f"merger replays that dropped already-sent outputs: {repeats}"
    print(f"{summary}; {len(live)} campaign triggers as offline, none repeated; {note}")
