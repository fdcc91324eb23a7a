"""Recovery time of a worker whose dedup state holds N event ids, on a real local broker.

    .venv/bin/python -m bench.recovery                 # 20M ids (a day at ~230 ev/s)
    QUICK=1 .venv/bin/python -m bench.recovery         # 1M ids
    .venv/bin/python -m bench.recovery --ids 5000000

The ids go in through the worker's real ingest and commit path: N valid,
distinct events (event time = now) are written to ``pulse.events``, one worker
drains them (its RSS growth per id is printed: the dedup index plus everything
else the events leave behind), and is killed with SIGKILL. A second worker then
starts on a fresh data dir and the time until its ``/readyz`` answers 200 (its
partitions assigned and their state, the N ids included, restored) is printed
with ids/s. Goal: <= 30 s for 20M ids. The killed member's session (10 s
here) is let expire before the second worker starts: waiting for it is what
static membership removes, and is not part of the restore.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import tempfile
import time
from pathlib import Path

import orjson

from bench.common import group_lag, log, rss_mib, start_ready_worker
from stream.cli.common import ensure_topics_with_retry
from stream.config import Settings
from stream.kafka.writer import EventWriter
from stream.tools.broker import KafkaBroker, free_port


async def fill(settings: Settings, n: int, users: int = 100_000, campaigns: int = 200) -> None:
    """``n`` distinct valid views (ids ``r<i>``, UUID length), written in chunks of 10,000."""
    now = int(time.time() * 1000)
    written, chunk, t0 = 0, 10_000, time.monotonic()
    async with EventWriter(settings) as writer:
        while written < n:
            batch = []
            for i in range(written, min(n, written + chunk)):
                user = f"u{i % users}"
                batch.append(
                    (
                        user.encode(),
                        orjson.dumps(
                            {
                                "event_id": f"{i:036d}",
                                "type": "view",
                                "event_time": now,
                                "user_id": user,
                                "campaign_id": f"c{i % campaigns}",
                            }
                        ),
                    )
                )
            written += await writer.send_many(batch)
            if written % 1_000_000 < chunk:
                log(f"written {written:,} events ({written / (time.monotonic() - t0):,.0f}/s)")


def main() -> None:
    ap = argparse.ArgumentParser()
    quick = bool(os.environ.get("QUICK"))
    ap.add_argument("--ids", type=int, default=1_000_000 if quick else 20_000_000)
    ap.add_argument("--store", default="memory", choices=["memory", "rocksdb"])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pulse-recovery-"))
    broker = KafkaBroker(port=free_port(), data_dir=tmp / "kafka").start()
    try:
        base = dict(
            os.environ,
            PULSE_KAFKA_BOOTSTRAP=broker.bootstrap,
            PULSE_APP_ID="recovery",
            PULSE_TOPIC_PREFIX="recovery.",
            PULSE_STORE=args.store,
            PULSE_LOG_LEVEL="info",
            PULSE_DEDUP_TTL="24h",
            BROKER_SESSION_TIMEOUT="10",  # the killed member leaves the group 10 s after the kill
        )
        settings = Settings.from_env(base)
        asyncio.run(ensure_topics_with_retry(settings))
        asyncio.run(fill(settings, args.ids))
        env = dict(base, PULSE_WEB_PORT=str(free_port()), PULSE_DATA_DIR=str(tmp / "first"))
        first = start_ready_worker(env, tmp / "first.log", timeout_s=300)
        rss0 = rss_mib(first.pid)
        t0 = time.monotonic()
        while (
            lag := asyncio.run(group_lag(broker.bootstrap, "recovery", settings.topic("events")))
        ) > 0:
            log(f"draining: {lag:,} events left ({time.monotonic() - t0:.0f}s)")
            time.sleep(10)
        time.sleep(3)  # the last batch's state and offsets
        rss1 = rss_mib(first.pid)
        drain_s = time.monotonic() - t0
        first.send_signal(signal.SIGKILL)
        first.wait()
        time.sleep(12)  # its session expires: what is timed below is the restore, not that wait
        print(
            f"RECOVERY fill: {args.ids:,} ids drained in {drain_s:.0f}s "
            f"({args.ids / drain_s:,.0f} ev/s); worker RSS {rss0:.0f} -> {rss1:.0f} MiB "
            f"= {(rss1 - rss0) * 2**20 / args.ids:.1f} B/id",
            flush=True,
        )
        env = dict(base, PULSE_WEB_PORT=str(free_port()), PULSE_DATA_DIR=str(tmp / "second"))
        t1 = time.monotonic()
        second = start_ready_worker(env, tmp / "second.log", timeout_s=600)
        ready_s = time.monotonic() - t1
        restored = sum(
            int(m) for m in re.findall(r"\((\d+) event ids in", (tmp / "second.log").read_text())
        )
        print(
            f"RECOVERY start on a fresh data dir -> /readyz 200: {ready_s:.1f}s; "
            f"{restored:,} ids restored ({restored / ready_s:,.0f} ids/s); "
            f"RSS {rss_mib(second.pid):.0f} MiB; goal <= 30 s: "
            f"{'PASS' if ready_s <= 30 and restored >= args.ids else 'FAIL'}",
            flush=True,
        )
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
