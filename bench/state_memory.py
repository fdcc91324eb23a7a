"""Worker RSS against campaigns × users, on a real local broker.

    .venv/bin/python -m bench.state_memory --events 200000 --grid 20x10000,200x100000

For each grid point it pre-fills a fresh topic prefix with simulated traffic
(C campaigns, U users), drains it with one ``pulse worker`` and prints the
worker's VmRSS (from /proc) after the drain, with the dedup, window and click
state sizes that drive it. Window state is bounded by window expiry (closed
windows leave memory), dedup by PULSE_DEDUP_TTL, last clicks by
PULSE_ATTRIBUTION_WINDOW.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import group_lag, rss_mib, start_ready_worker
from stream.cli.common import ensure_topics_with_retry
from stream.config import Settings
from stream.core.simulator import SimConfig, Simulator
from stream.kafka.writer import EventWriter
from stream.tools.broker import KafkaBroker, free_port
from stream.tools.workerproc import stop_worker


async def fill(settings: Settings, campaigns: int, users: int, events: int) -> int:
    rate = 20000
    sim = Simulator(
        SimConfig(
            rate=rate,
            duration_s=events / rate,
            campaigns=campaigns,
            users=users,
            seed=11,
            malformed_share=0,
            late_share=0,
            start_ms=int(time.time() * 1000) - int(events / rate * 1000),
        )
    )
    n = 0
    async with EventWriter(settings) as writer:
        batch: list[tuple[bytes | None, bytes]] = []
        for b in sim.batches(batch_ms=1000):
            batch.extend((it.key, it.value) for it in b.items)
            if len(batch) >= 5000:
                n += await writer.send_many(batch)
                batch = []
        n += await writer.send_many(batch)
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--grid", default="20x10000,200x100000")
    ap.add_argument("--store", default="memory", choices=["memory", "rocksdb"])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pulse-mem-"))
    broker = KafkaBroker(port=free_port(), data_dir=tmp / "kafka").start()
    try:
        for i, point in enumerate(args.grid.split(",")):
            campaigns, users = (int(x) for x in point.split("x"))
            env = dict(
                os.environ,
                PULSE_KAFKA_BOOTSTRAP=broker.bootstrap,
                PULSE_WEB_PORT=str(free_port()),
                PULSE_APP_ID=f"mem{i}",
                PULSE_TOPIC_PREFIX=f"mem{i}.",
                PULSE_DATA_DIR=str(tmp / f"d{i}"),
                PULSE_LOG_LEVEL="warning",
            )
            settings = Settings.from_env(env)
            asyncio.run(ensure_topics_with_retry(settings))
            n = asyncio.run(fill(settings, campaigns, users, args.events))
            proc = start_ready_worker(env, tmp / f"worker{i}.log")
            idle_rss = rss_mib(proc.pid)
            while (
                asyncio.run(group_lag(broker.bootstrap, settings.app_id, settings.topic("events")))
                > 0
            ):
                time.sleep(1)
            time.sleep(2)
            rss = rss_mib(proc.pid)
            text = httpx.get(f"http://127.0.0.1:{env['PULSE_WEB_PORT']}/metrics").text
            windows = [ln for ln in text.splitlines() if ln.startswith("pulse_windows_emitted")]
            print(
                f"campaigns={campaigns} users={users} events={n} rss_start={idle_rss:.0f}MiB "
                f"rss_after_drain={rss:.0f}MiB delta={rss - idle_rss:.0f}MiB "
                f"({(rss - idle_rss) * 1024 * 1024 / n:.0f} B/event) {windows}",
                flush=True,
            )
            stop_worker(proc)
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
