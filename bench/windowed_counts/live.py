"""Live latency: steady traffic at event time = now into the running worker."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench.common import TopicReader, log
from bench.windowed_counts.check import compare, exit_check
from bench.windowed_counts.produce import fast_producer, send_partitioned
from bench.windowed_counts.pulse import pulse_rows
from bench.windowed_counts.workload import GRACE_MS, WINDOW_MS, EventMaker, Key, Row, count_event
from stream.config import Settings


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


async def live_latency(
    settings: Settings,
    proc: subprocess.Popen[bytes],
    tmp: Path,
    rate: float,
    seconds: float,
    seed: int,
) -> dict[str, Any]:
    died = exit_check(proc, tmp, "pulse")
    if (why := died()) is not None:
        raise RuntimeError(why)
    bootstrap = settings.kafka_bootstrap
    topic = settings.topic("events")
    metrics = await TopicReader(bootstrap, settings.topic("metrics"), from_end=True).start()
    raw = await TopicReader(bootstrap, topic, from_end=True, keep=False).start()
    raw_counts: dict[Key, Row] = {}
    raw_visible: dict[int, float] = {}  # window_start -> when raw saw an event past end + grace
    raw_max = [0]
    loads = orjson.loads

    def on_raw(now: float, msgs: list[Any]) -> None:
        for m in msgs:
            ts = count_event(raw_counts, loads(m.value))
            if ts > raw_max[0]:
                raw_max[0] = ts
        for ws in {k[3] for k in raw_counts} - raw_visible.keys():
            if raw_max[0] >= ws + WINDOW_MS + GRACE_MS:
                raw_visible[ws] = now

    raw.on_batch = on_raw
    maker = EventMaker(seed)
    truth: dict[Key, Row] = {}
    last_create: dict[int, int] = {}  # window_start -> create time of its last event (ms)
    producer = fast_producer(bootstrap)
    await producer.start()
    sent = 0
    try:
        t0 = time.time()
        pending: list[asyncio.Future[Any]] = []
        while True:
            now = time.time()
            if now - t0 >= seconds:
                break
            if (why := died()) is not None:
                raise RuntimeError(why)
            due = int((now - t0) * rate) - sent
            if due > 0:
                now_ms = int(now * 1000)
                records = maker.make(np.full(due, now_ms, dtype=np.int64), truth)
                ws = now_ms - now_ms % WINDOW_MS
                last_create[ws] = now_ms
                pending += await send_partitioned(producer, topic, records)
                sent += due
                if len(pending) > 200:
                    await asyncio.gather(*pending)
                    pending = []
            await asyncio.sleep(0.02)
        await asyncio.gather(*pending)
        last_event = max(last_create.values())
        # windows the watermark closed while traffic flowed (the others close on idle)
        closed = sorted(ws for ws in last_create if ws + WINDOW_MS + GRACE_MS <= last_event)
        if not closed:
            raise RuntimeError(
                f"no window closed by the watermark in {seconds:.0f} s: "
                f"use --live-seconds > {(WINDOW_MS + GRACE_MS) / 1000:.0f}"
            )
        wanted = {k: v for k, v in truth.items() if k[3] in closed}
        log(
            f"live: sent {sent} events in {time.time() - t0:.0f} s; "
            f"{len(closed)} window(s) closed by the watermark: waiting for their records"
        )
        got_rows: dict[Key, Row] = {}
        dups = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got_rows, dups = {}, 0
            for _, _, value in metrics.items:
                parsed = pulse_rows(value)
                if parsed is not None and parsed[0][3] in closed:
                    dups += parsed[0] in got_rows
                    got_rows[parsed[0]] = parsed[1]
            if wanted.keys() <= got_rows.keys() and set(closed) <= raw_visible.keys():
                break
            if (why := died()) is not None:
                raise RuntimeError(why)
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)
    finally:
        await producer.stop()
        await metrics.stop()
        await raw.stop()

    pulse_lat, pulse_vis = [], []
    seen: set[Key] = set()
    for t, _, value in metrics.items:
        parsed = pulse_rows(value)
        if parsed is None or parsed[0][3] not in closed or parsed[0] in seen:
            continue
        seen.add(parsed[0])
        ws = parsed[0][3]
        pulse_vis.append(t - (ws + WINDOW_MS) / 1000)
        pulse_lat.append(t - last_create[ws] / 1000)
    raw_lat = [raw_visible[ws] - last_create[ws] / 1000 for ws in closed if ws in raw_visible]
    raw_vis = [raw_visible[ws] - (ws + WINDOW_MS) / 1000 for ws in closed if ws in raw_visible]
    raw_live = {k: v for k, v in raw_counts.items() if k[3] in closed}
    return {
        "rate": rate,
        "seconds": seconds,
        "events": sent,
        "windows": len(closed),
        "pulse_records": len(pulse_lat),
        "pulse_latency_p50": pct(pulse_lat, 50),
        "pulse_latency_p99": pct(pulse_lat, 99),
        "pulse_visible_p50": pct(pulse_vis, 50),
        "pulse_visible_p99": pct(pulse_vis, 99),
        "raw_latency_p50": pct(raw_lat, 50),
        "raw_latency_p99": pct(raw_lat, 99),
        "raw_visible_p50": pct(raw_vis, 50),
        "raw_visible_p99": pct(raw_vis, 99),
        "pulse_check": compare(wanted, got_rows, dups),
        "raw_check": compare(wanted, raw_live),
    }
