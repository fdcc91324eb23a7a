"""How fast one worker (plus its collector) keeps up, measured on a real local broker.

    .venv/bin/python -m bench.ingest_rate --rates 1000,2000,4000 --seconds 30

For each rate it runs ``pulse simulate --via http`` against one ``pulse worker``
and samples the worker's consumer lag (end offsets − committed offsets of its
group) every 2 s. A rate is sustained when the achieved send rate is within 5%
of the target and the lag does not grow (slope of the second half < 2% of the
rate). Also measures the drain rate of a pre-filled topic (``--drain N``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from bench.common import group_lag, slope, start_ready_worker
from stream.config import Settings
from stream.core.simulator import SimConfig
from stream.tools import workerproc
from stream.tools.broker import KafkaBroker, free_port
from stream.tools.simulate import run_simulation


async def sample_lag(
    bootstrap: str, group: str, topic: str, stop: asyncio.Event, out: list[tuple[float, int]]
) -> None:
    t0 = time.monotonic()
    while not stop.is_set():
        try:
            out.append((time.monotonic() - t0, await group_lag(bootstrap, group, topic)))
        except Exception as exc:
            print(f"  lag sample failed: {exc!r}")
        await asyncio.sleep(2.0)


async def run_rate(settings: Settings, url: str, rate: float, seconds: float, seed: int) -> dict:
    stop = asyncio.Event()
    samples: list[tuple[float, int]] = []
    sampler = asyncio.create_task(
        sample_lag(
            settings.kafka_bootstrap, settings.app_id, settings.topic("events"), stop, samples
        )
    )
    cfg = SimConfig(rate=rate, duration_s=seconds, seed=seed, campaigns=20, users=20000)
    summary = await run_simulation(
        settings, cfg, via="http", url=url, write_key=settings.write_keys[0], progress=False
    )
    await asyncio.sleep(4)  # let the tail drain
    stop.set()
    await sampler
    half = [p for p in samples if p[0] >= seconds / 2 and p[0] <= seconds]
    lag_slope = slope(half)
    final_lag = samples[-1][1] if samples else -1
    return {
        "target": rate,
        "achieved": summary["achieved_rate"],
        "max_lag": max((p[1] for p in samples), default=-1),
        "final_lag": final_lag,
        "lag_slope_per_s": round(lag_slope, 1),
        "sustained": summary["achieved_rate"] >= 0.95 * rate and lag_slope < 0.02 * rate,
    }


async def drain(settings: Settings, n: int, log: Path, env: dict[str, str]) -> dict:
    from stream.core.simulator import Simulator
    from stream.kafka.writer import EventWriter

    sim = Simulator(
        SimConfig(
            rate=20000,
            duration_s=n / 20000,
            seed=7,
            campaigns=200,
            users=100000,
            malformed_share=0,
            late_share=0,
            duplicate_share=0,
        )
    )
    items = [(it.key, it.value) for b in sim.batches(batch_ms=1000) for it in b.items]
    async with EventWriter(settings) as writer:
        for i in range(0, len(items), 5000):
            await writer.send_many(items[i : i + 5000])
    t0 = time.monotonic()
    proc = start_ready_worker(env, log)
    ready = time.monotonic()
    while await group_lag(settings.kafka_bootstrap, settings.app_id, settings.topic("events")) > 0:
        await asyncio.sleep(0.5)
    done = time.monotonic()
    workerproc.stop_worker(proc)
    return {
        "events": len(items),
        "startup_s": round(ready - t0, 1),
        "drain_rate": round(len(items) / (done - ready)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="1000,2000,3000,4000")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--drain", type=int, default=0, help="pre-fill N events and time the drain")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pulse-bench-"))
    broker = KafkaBroker(port=free_port(), data_dir=tmp / "kafka").start()
    env = dict(
        os.environ,
        PULSE_KAFKA_BOOTSTRAP=broker.bootstrap,
        PULSE_WEB_PORT=str(free_port()),
        PULSE_WRITE_KEYS="bench",
        PULSE_RATE_LIMIT="0",
        PULSE_DATA_DIR=str(tmp / "data"),
        PULSE_LOG_LEVEL="warning",
    )
    try:
        if args.drain:
            env_d = dict(env, PULSE_APP_ID="pulse-drain", PULSE_TOPIC_PREFIX="drain.")
            settings = Settings.from_env(env_d)
            from stream.cli.common import ensure_topics_with_retry

            asyncio.run(ensure_topics_with_retry(settings))
            print("drain:", asyncio.run(drain(settings, args.drain, tmp / "drain.log", env_d)))
        settings = Settings.from_env(env)
        proc = start_ready_worker(env, tmp / "worker.log")
        url = f"http://127.0.0.1:{env['PULSE_WEB_PORT']}"
        try:
            for i, rate in enumerate(float(r) for r in args.rates.split(",") if r):
                print(
                    asyncio.run(run_rate(settings, url, rate, args.seconds, seed=100 + i)),
                    flush=True,
                )
        finally:
            workerproc.stop_worker(proc)
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
