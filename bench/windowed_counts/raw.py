"""(a) The raw consumer: ``AIOKafkaConsumer.getmany`` + ``orjson.loads`` + dict counting."""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from bench.common import cpu_s
from bench.windowed_counts.workload import Key, Row, count_event


async def raw_drain(bootstrap: str, topic: str, n: int) -> dict[str, Any]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    counts: dict[Key, Row] = {}
    seen = 0
    loads = orjson.loads
    try:
        t0, c0 = time.monotonic(), cpu_s()
        while seen < n:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for msgs in batches.values():
                for m in msgs:
                    count_event(counts, loads(m.value))
                seen += len(msgs)
            if time.monotonic() - t0 > 600:
                raise TimeoutError(f"raw consumer read only {seen}/{n} events in 600 s")
        elapsed, cpu = time.monotonic() - t0, cpu_s() - c0
    finally:
        await consumer.stop()
    return {
        "events": seen,
        "seconds": round(elapsed, 3),
        "rate": seen / elapsed,
        "cpu_us_per_event": 1e6 * cpu / seen,
        "counts": counts,
    }
