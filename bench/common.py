"""What the benches share: consumer-lag probe, topic reader, worker start, CPU and RSS.

One copy each, used by ``bench.windowed_counts``, ``bench.ingest_rate``,
``bench.state_memory`` and ``bench.soak`` (run them as ``python -m bench.<name>``
from the repo root).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from stream.tools.workerproc import WorkerNotReady, start_worker, stop_worker, wait_ready

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"  # git-ignored


# --------------------------------------------------------------------- Kafka


class LagProbe:
    """End offsets − committed offsets of a consumer group, with long-lived clients."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)

    async def __aenter__(self) -> LagProbe:
        await self.admin.start()
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def topics(self) -> list[str]:
        return list(await self.admin.list_topics())

    async def lag(self, group: str, topics: list[str]) -> int:
        tps = []
        for topic in topics:
            parts = self.consumer.partitions_for_topic(topic)
            if not parts:
                await self.consumer._client.force_metadata_update()
                parts = self.consumer.partitions_for_topic(topic) or set()
            tps += [TopicPartition(topic, p) for p in parts]
        if not tps:
            return -1
        ends = await self.consumer.end_offsets(tps)
        committed = await self.admin.list_consumer_group_offsets(group, partitions=tps)
        total = 0
        for tp in tps:
            c = committed.get(tp)
            total += ends[tp] - (c.offset if c is not None and c.offset >= 0 else 0)
        return total


async def group_lag(bootstrap: str, group: str, topic: str) -> int:
    """:meth:`LagProbe.lag` of ``group`` on one ``topic`` with clients of its own (-1: no topic)."""
    async with LagProbe(bootstrap) as probe:
        return await probe.lag(group, [topic])


class TopicReader:
    """Reads every partition of a topic in the background, stamping arrival times."""

    def __init__(
        self, bootstrap: str, topic: str, from_end: bool = False, keep: bool = True
    ) -> None:
        self.topic = topic
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=20,
        )
        self.from_end = from_end
        self.keep = keep
        self.items: list[tuple[float, bytes | None, bytes]] = []
        self.on_batch: Callable[[float, list[Any]], None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> TopicReader:
        c = self.consumer
        await c.start()
        parts = c.partitions_for_topic(self.topic)
        for _ in range(50):
            if parts:
                break
            await c._client.force_metadata_update()
            parts = c.partitions_for_topic(self.topic)
            await asyncio.sleep(0.1)
        tps = [TopicPartition(self.topic, p) for p in sorted(parts or ())]
        if not tps:
            raise RuntimeError(f"topic {self.topic} has no partitions")
        c.assign(tps)
        if self.from_end:  # pin the position now, before anything new is written
            await c.seek_to_end(*tps)
            for tp in tps:
                await c.position(tp)
        else:
            await c.seek_to_beginning(*tps)
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=200, max_records=10_000)
            now = time.time()
            for msgs in batches.values():
                if self.keep:
                    self.items.extend((now, m.key, m.value) for m in msgs)
                if self.on_batch is not None:
                    self.on_batch(now, msgs)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.consumer.stop()


# --------------------------------------------------------------------- processes


def start_ready_worker(
    env: Mapping[str, str], log: Path, timeout_s: float = 120.0
) -> subprocess.Popen[bytes]:
    """``pulse worker`` (cwd = repo root) once its ``/readyz`` answers 200, else SystemExit."""
    proc = start_worker(env, log, cwd=ROOT)
    try:
        wait_ready(f"http://127.0.0.1:{env['PULSE_WEB_PORT']}", proc, timeout_s=timeout_s)
    except WorkerNotReady as exc:
        stop_worker(proc)
        raise SystemExit(f"{exc}; see {log}") from None
    return proc


def cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system, all threads) used so far by ``pid`` (default: this process).

    On a shared machine wall-clock rates swing with the neighbours' load; CPU
    time per event does not, so the summary also compares µs of CPU per event.
    """
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` in MiB."""
    try:
        import psutil
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # kB
        raise RuntimeError(f"no VmRSS for pid {pid}") from None
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 for fewer than 3 points)."""
    if len(points) < 3:
        return 0.0
    xs, ys = zip(*points, strict=True)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs) or 1.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den
