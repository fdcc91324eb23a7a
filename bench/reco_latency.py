"""Latency of ``GET /v1/users/{id}/recommendations`` on one local worker under live traffic.

    .venv/bin/python -m bench.reco_latency --rate 200 --requests 2000

Starts a local broker and one worker (every partition local), loads 3 simulated
days of shopper traffic (:class:`~stream.core.browsing.BrowseSim`, 500 shoppers),
then sends new shopper events at ``--rate`` per second (the demo's rate: 200) from
another thread while it asks for ``k=20`` recommendations of random shoppers, one
request at a time over a kept-alive connection. Prints p50 / p99 / max (ms) and a
``RECO-LATENCY`` line against the goal p99 ≤ 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaProducer

from bench.common import start_ready_worker
from stream.config import Settings
from stream.core.browsing import BrowseSim
from stream.tools import workerproc
from stream.tools.broker import KafkaBroker, free_port

GOAL_MS = 5.0


def keyed(events: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    return [(e["user_id"].encode(), orjson.dumps(e)) for e in events]


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, key=k, value=v) for k, v in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


class LiveTraffic(threading.Thread):
    """Shopper events stamped with the current time, ``rate`` per second, until stopped."""

    def __init__(self, bootstrap: str, topic: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.rate = bootstrap, topic, rate
        self.stop_flag = threading.Event()
        self.sent = 0

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        events = BrowseSim(users=500, seed=2).events()
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            t0 = time.monotonic()
            for n, e in enumerate(events):
                if self.stop_flag.is_set():
                    break
                wait = t0 + n / self.rate - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                e = {**e, "event_id": f"live-{n}", "event_time": int(time.time() * 1000)}
                await producer.send(self.topic, key=e["user_id"].encode(), value=orjson.dumps(e))
                self.sent += 1
        finally:
            await producer.stop()


def wait_events(url: str, n: int, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = httpx.get(f"{url}/metrics", timeout=10).text
        total = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("pulse_events_total{")
        )
        if total >= n:
            return
        time.sleep(1)
    raise SystemExit(f"the worker did not count {n} events in {timeout_s:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=200.0, help="live shopper events per second")
    ap.add_argument("--requests", type=int, default=2000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pulse-reco-"))
    broker = KafkaBroker(port=free_port(), data_dir=tmp / "kafka").start()
    env = dict(
        os.environ,
        PULSE_KAFKA_BOOTSTRAP=broker.bootstrap,
        PULSE_WEB_PORT=str(free_port()),
        PULSE_DATA_DIR=str(tmp / "data"),
        PULSE_LOG_LEVEL="warning",
    )
    settings = Settings.from_env(env)
    topic = settings.topic("events")
    try:
        proc = start_ready_worker(env, tmp / "worker.log")
        url = f"http://127.0.0.1:{env['PULSE_WEB_PORT']}"
        try:
            history = BrowseSim(users=500, seed=1).events()
            asyncio.run(produce(broker.bootstrap, topic, keyed(history)))
            wait_events(url, len(history))
            users = sorted({e["user_id"] for e in history})
            live = LiveTraffic(broker.bootstrap, topic, args.rate)
            live.start()
            rng = random.Random(7)
            times: list[float] = []
            with httpx.Client(base_url=url, timeout=10) as client:
                t_start = time.monotonic()
                for n in range(args.requests + 200):
                    user = rng.choice(users)
                    t0 = time.perf_counter()
                    r = client.get(f"/v1/users/{user}/recommendations", params={"k": "20"})
                    took = time.perf_counter() - t0
                    if r.status_code != 200:
                        raise SystemExit(f"HTTP {r.status_code}: {r.text}")
                    if n >= 200:  # warm-up
                        times.append(took * 1000)
                    time.sleep(0.002)
                elapsed = time.monotonic() - t_start
            live.stop_flag.set()
            live.join(30)
        finally:
            workerproc.stop_worker(proc)
    finally:
        broker.stop()
    times.sort()
    p50, p99 = statistics.median(times), times[int(len(times) * 0.99)]
    print(
        f"{len(times):,} requests while {live.sent:,} live events arrived in {elapsed:.0f} s "
        f"({live.sent / elapsed:.0f}/s): p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {times[-1]:.2f}"
    )
    verdict = "PASS" if p99 <= GOAL_MS else "MISS"
    print(f"RECO-LATENCY p50={p50:.2f}ms p99={p99:.2f}ms (goal p99 ≤{GOAL_MS:g}ms) {verdict}")


if __name__ == "__main__":
    main()
