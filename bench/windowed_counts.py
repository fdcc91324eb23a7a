"""Windowed campaign counts: Pulse vs a raw aiokafka consumer vs Quix Streams, one broker.

    make bench            # 1,000,000 events
    make bench QUICK=1    # 200,000 events, shorter live phase: a few minutes

Everything runs on one local Kafka (``KafkaBroker`` from the Maven jars):

1. Generate N events (80/18/2 % view/click/purchase, 100k Zipf-distributed users,
   200 campaigns × 2 variants, 6 channels, event time ordered over 20 minutes
   with ±1 s jitter) and the exact ground truth per campaign × variant ×
   channel × 60 s window. Write them to ``bench.events`` (4 partitions, key =
   user id, partition = crc32(user id) % 4) and copies to ``quix.events`` and
   ``quix-g5.events``.
2. (a) raw: an ``AIOKafkaConsumer`` drains ``bench.events`` with
   ``getmany(max_records=10000)`` + ``orjson.loads`` + dict counting.
3. (c) Quix Streams 3.28.1 (``bench/quix_app.py`` in ``bench/.venv-quix``)
   drains a copy: group_by campaign × variant × channel, tumbling 60 s windows
   on ``event_time``, final windows to a topic. The drain ends when its
   consumer group has committed the input and repartition topics to their
   ends; then flush records close the last windows (Quix has no wall-clock
   close) and its results are compared. Two runs: ``quix`` with a grace that
   covers the whole replay (so no event can be late, whatever order the
   partitions are read in: the summary line's figure) and ``quix_g5`` with
   Pulse's grace of 5 s. Quix keeps one stream time per repartition
   partition, and a backlog is read partition chunk by partition chunk, so
   with a short grace it drops events as late (reported, not hidden).
4. (b) one ``pulse worker`` (``PULSE_TOPIC_PREFIX=bench.``, window 60 s, grace
   5 s) drains ``bench.events``: from ``/readyz`` == 200 until the group's
   committed offsets reach the end offsets. The last windows close when the
   partitions have been idle for window + grace on the wall clock; then the
   ``bench.metrics`` records are compared with the ground truth.
5. Live latency: the same worker gets steady traffic (``--live-rate`` ev/s,
   event time = now). For every window closed by the watermark while traffic
   flows: Pulse = when its ``bench.metrics`` record is read back; raw = when
   the raw consumer reads the first event past window end + grace. Latency is
   that time minus the create time of the window's last event (the contract's
   "event → its window's metrics visible"); "visible" latency is that time
   minus the window end.

Nothing is hard-coded: every figure comes from this run. A part that fails
prints FAILED with the reason and the others go on. A JSON copy of the results
goes to ``bench/results/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream.config import Settings  # noqa: E402
from stream.kafka.topics import ensure_topics  # noqa: E402
from stream.kafka.writer import send_batches  # noqa: E402
from stream.tools.broker import KafkaBroker, free_port  # noqa: E402
from stream.tools.workerproc import WorkerNotReady, start_worker, stop_worker, wait_ready  # noqa: E402

WINDOW_MS = 60_000
GRACE_MS = 5_000
PARTITIONS = 4
SPAN_MS = 20 * 60_000
JITTER_MS = 1_000
USERS = 100_000
CAMPAIGNS = 200
VARIANTS = ("A", "B")
CHANNELS = ("web", "mobile", "email", "social", "search", "display")
CHANNEL_P = (0.34, 0.26, 0.08, 0.14, 0.10, 0.08)
TYPES = ("view", "click", "purchase")
TYPE_P = (0.80, 0.18, 0.02)
ZIPF_S = 1.1
QUIX_VENV = ROOT / "bench" / ".venv-quix"
RESULTS = ROOT / "bench" / "results"  # git-ignored
STAMP = time.strftime("%Y%m%d-%H%M%S")
QUIX_VERSION = "3.28.1"
#: Quix runs: input topic -> (result name, grace). "quix" has a grace covering the whole
#: replay, so no event can be late whatever order its partitions are read in (the
#: configuration in which Quix counts exactly); "quix_g5" has Pulse's grace.
QUIX_RUNS = {
    "quix.events": ("quix", SPAN_MS + 2 * JITTER_MS + WINDOW_MS),
    "quix-g5.events": ("quix_g5", GRACE_MS),
}

Key = tuple[str, str, str, int]  # campaign_id, variant_id ("" = none), channel, window_start
Row = list[Any]  # [views, clicks, purchases, revenue]
Record = tuple[int, bytes, bytes]  # partition, key, value


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


# --------------------------------------------------------------------- workload


@dataclass
class Workload:
    records: list[Record]
    truth: dict[Key, Row]
    max_event_time: int


class EventMaker:
    """Pulse-format events with Zipf users; counts the ground truth as it goes."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        weights = np.arange(1, USERS + 1, dtype=np.float64) ** -ZIPF_S
        self.user_cdf = np.cumsum(weights) / weights.sum()
        ids = self.rng.permutation(USERS)  # popularity rank -> user id (not id order)
        self.user_keys = [f"u-{i:06d}" for i in ids.tolist()]
        self.user_parts = [zlib.crc32(k.encode()) % PARTITIONS for k in self.user_keys]
        self.campaign_ids = [f"cmp-{i:03d}" for i in range(CAMPAIGNS)]
        self.run = uuid.uuid4().hex[:8]
        self.seq = 0

    def make(self, times: np.ndarray, truth: dict[Key, Row]) -> list[Record]:
        """One event per entry of ``times`` (epoch ms), in that order."""
        n = len(times)
        rng = self.rng
        users = np.searchsorted(self.user_cdf, rng.random(n), side="right").clip(0, USERS - 1)
        types = rng.choice(3, size=n, p=TYPE_P).tolist()
        camps = rng.integers(0, CAMPAIGNS, n).tolist()
        variants = rng.integers(0, len(VARIANTS), n).tolist()
        chans = rng.choice(len(CHANNELS), size=n, p=CHANNEL_P).tolist()
        revenue = np.round(rng.lognormal(3.7, 0.7, n), 2).tolist()
        user_keys, user_parts, campaign_ids = self.user_keys, self.user_parts, self.campaign_ids
        dumps = orjson.dumps
        out: list[Record] = []
        append = out.append
        prefix = f"b{self.run}-"
        seq = self.seq
        for i, (u, ts) in enumerate(zip(users.tolist(), times.tolist(), strict=True)):
            seq += 1
            t = types[i]
            user = user_keys[u]
            cid = campaign_ids[camps[i]]
            vid = VARIANTS[variants[i]]
            ch = CHANNELS[chans[i]]
            ev: dict[str, Any] = {
                "event_id": prefix + str(seq),
                "type": TYPES[t],
                "event_time": ts,
                "user_id": user,
                "campaign_id": cid,
                "variant_id": vid,
                "channel": ch,
                "session_id": f"s-{user}-{ts // 1_800_000}",
            }
            key = (cid, vid, ch, ts - ts % WINDOW_MS)
            row = truth.get(key)
            if row is None:
                row = truth[key] = [0, 0, 0, 0.0]
            row[t] += 1
            if t == 2:
                ev["order_id"] = "o-" + ev["event_id"]
                ev["revenue"] = revenue[i]
                ev["currency"] = "EUR"
                row[3] += revenue[i]
            append((user_parts[u], user.encode(), dumps(ev)))
        self.seq = seq
        return out


def prefill_workload(n: int, seed: int) -> Workload:
    now = int(time.time() * 1000)
    start = now - SPAN_MS - 3 * WINDOW_MS
    start -= start % WINDOW_MS
    maker = EventMaker(seed)
    jitter = maker.rng.integers(-JITTER_MS, JITTER_MS + 1, n)
    times = start + (np.arange(n, dtype=np.int64) * SPAN_MS) // n + jitter
    truth: dict[Key, Row] = {}
    records = maker.make(times, truth)
    return Workload(records, truth, int(times.max()))


# --------------------------------------------------------------------- kafka helpers


def fast_producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks=1,
        linger_ms=5,
        max_batch_size=1024 * 1024,
        max_request_size=16 * 1024 * 1024,
        client_id="bench-producer",
    )


async def send_partitioned(
    producer: AIOKafkaProducer, topic: str, records: list[Record]
) -> list[asyncio.Future[Any]]:
    """One producer batch per partition (``stream.kafka.writer.send_batches``); futures."""
    by_part: dict[int, list[tuple[bytes, bytes]]] = {}
    for p, k, v in records:
        by_part.setdefault(p, []).append((k, v))
    return await send_batches(producer, topic, by_part)


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if name not in set(await admin.list_topics()):
            await admin.create_topics(
                [NewTopic(name=name, num_partitions=partitions, replication_factor=1)]
            )
    finally:
        await admin.close()


async def prefill(bootstrap: str, topics: list[str], records: list[Record]) -> float:
    producer = fast_producer(bootstrap)
    await producer.start()
    chunk = 20_000
    t0 = time.monotonic()
    try:
        with Progress(
            TextColumn("prefill {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        ) as progress:
            for topic in topics:
                task = progress.add_task(topic, total=len(records))
                pending: list[asyncio.Future[Any]] = []
                for i in range(0, len(records), chunk):
                    part = records[i : i + chunk]
                    pending += await send_partitioned(producer, topic, part)
                    if len(pending) > 64:
                        await asyncio.gather(*pending)
                        pending = []
                    progress.update(task, advance=len(part))
                await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return len(records) * len(topics) / (time.monotonic() - t0)


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


def compare(truth: dict[Key, Row], got: dict[Key, Row], duplicates: int = 0) -> dict[str, Any]:
    """Exact count comparison (revenue within 1e-6 relative); every difference is counted."""
    missing = extra = wrong = 0
    examples: list[str] = []
    for key in truth.keys() | got.keys():
        t, g = truth.get(key), got.get(key)
        if g is None:
            missing += 1
        elif t is None:
            extra += 1
        elif list(t[:3]) != list(g[:3]) or abs(t[3] - g[3]) > 1e-6 * max(1.0, abs(t[3])):
            wrong += 1
        else:
            continue
        if len(examples) < 3:
            examples.append(f"{key}: truth={t} got={g}")
    events_truth = sum(r[0] + r[1] + r[2] for r in truth.values())
    events_got = sum(r[0] + r[1] + r[2] for r in got.values())
    mismatches = missing + extra + wrong + duplicates
    return {
        "ok": mismatches == 0,
        "mismatches": mismatches,
        "missing": missing,
        "extra": extra,
        "wrong": wrong,
        "duplicates": duplicates,
        "keys": len(truth),
        "events_truth": events_truth,
        "events_counted": events_got,
        "examples": examples,
    }


def exact_label(check: dict[str, Any] | None) -> str:
    if check is None:
        return "n/a"
    return "ok" if check["ok"] else f"MISMATCH({check['mismatches']}/{check['keys']} keys)"


def count_event(counts: dict[Key, Row], ev: dict[str, Any]) -> int:
    ts = ev["event_time"]
    wkey = (
        ev["campaign_id"],
        ev.get("variant_id") or "",
        ev.get("channel") or "web",
        ts - ts % WINDOW_MS,
    )
    row = counts.get(wkey)
    if row is None:
        row = counts[wkey] = [0, 0, 0, 0.0]
    t = ev["type"]
    if t == "view":
        row[0] += 1
    elif t == "click":
        row[1] += 1
    else:
        row[2] += 1
        row[3] += ev.get("revenue") or 0.0
    return ts


# --------------------------------------------------------------------- (a) raw consumer


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


# --------------------------------------------------------------------- (c) Quix Streams


def quix_python() -> Path:
    """The Quix venv's interpreter, created on first use (git-ignored)."""
    py = QUIX_VENV / "bin" / "python"
    probe = [str(py), "-c", "import quixstreams; print(quixstreams.__version__)"]
    if py.exists():
        got = subprocess.run(probe, capture_output=True, text=True)
        if got.returncode == 0 and got.stdout.strip() == QUIX_VERSION:
            return py
    log(f"installing quixstreams=={QUIX_VERSION} into {QUIX_VENV} (once) ...")
    base = shutil.which("python3.11") or sys.executable
    subprocess.run([base, "-m", "venv", str(QUIX_VENV)], check=True)
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", f"quixstreams=={QUIX_VERSION}"], check=True
    )
    return py


async def quix_run(
    bootstrap: str, topic: str, grace_ms: int, work: Workload, tmp: Path, timeout_s: float
) -> dict[str, Any]:
    py = quix_python()
    tag = uuid.uuid4().hex[:6]
    group, output = f"bench-quix-{tag}", f"{topic}.windows"
    name = f"quix-{tag}"
    stats_file = tmp / f"{name}-stats.json"
    logf = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            str(py),
            str(ROOT / "bench" / "quix_app.py"),
            "--broker",
            bootstrap,
            "--input",
            topic,
            "--output",
            output,
            "--group",
            group,
            "--state-dir",
            str(tmp / f"{name}-state"),
            "--window-ms",
            str(WINDOW_MS),
            "--grace-ms",
            str(grace_ms),
            "--stats",
            str(stats_file),
        ],
        stdout=logf,
        stderr=subprocess.STDOUT,
        cwd=tmp,
    )
    reader: TopicReader | None = None
    n = len(work.records)
    try:
        t_start = time.monotonic()
        first: float | None = None
        while first is None:  # the app prints QUIX_FIRST <epoch> on its first processed record
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the Quix app exited with {proc.returncode}: {_tail(tmp, name)}"
                )
            text = (tmp / f"{name}.log").read_text(errors="replace")
            for line in text.splitlines():
                if line.startswith("QUIX_FIRST "):
                    first = float(line.split()[1])
            if time.monotonic() - t_start > 120:
                raise TimeoutError("the Quix app processed nothing within 120 s")
            await asyncio.sleep(0.05)
        t_first = time.monotonic() - (time.time() - first)
        c_first = cpu_s(proc.pid)
        log("quix: processing; waiting for its group lag (input + repartition) to reach 0")
        async with LagProbe(bootstrap) as probe:
            repart: list[str] = []
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"the Quix app exited with {proc.returncode}: {_tail(tmp, name)}"
                    )
                if not repart:
                    repart = [
                        t
                        for t in await probe.topics()
                        if t.startswith("repartition__") and group in t
                    ]
                lag = await probe.lag(group, [topic, *repart]) if repart else -1
                if lag == 0:
                    t_done, c_done = time.monotonic(), cpu_s(proc.pid)
                    break
                if time.monotonic() - t_first > timeout_s:
                    raise TimeoutError(f"Quix group lag still {lag} after {timeout_s:.0f} s")
                await asyncio.sleep(0.25)
        drain_s = t_done - t_first
        log(f"quix: drained {n} events in {drain_s:.1f} s; sending flush records")
        reader = await TopicReader(bootstrap, output).start()
        flush_time = work.max_event_time + grace_ms + 2 * WINDOW_MS
        producer = fast_producer(bootstrap)
        await producer.start()
        try:
            flush = [
                (p, b"flush", orjson.dumps({"type": "flush", "n": n, "event_time": flush_time}))
                for p in range(PARTITIONS)
                for n in range(p * 16, p * 16 + 16)  # 64 keys: every repartition partition
            ]
            await asyncio.gather(*await send_partitioned(producer, topic, flush))
        finally:
            await producer.stop()
        got, dups, t_complete = await _wait_results(
            reader, work.truth, _quix_rows, 180.0, quiet_s=15.0, alive=_died(proc, tmp, name)
        )
        stats: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            stats = json.loads(stats_file.read_text())
        check = compare(work.truth, got, dups)
        return {
            "events": n,
            "grace_ms": grace_ms,
            "seconds": round(drain_s, 3),
            "rate": n / drain_s,
            "cpu_us_per_event": 1e6 * (c_done - c_first) / n,
            "results_complete_after_flush_s": round(t_complete - t_done, 3),
            "late_dropped": stats.get("late"),
            "check": check,
        }
    finally:
        if reader is not None:
            await reader.stop()
        stop_worker(proc)
        logf.close()


def _quix_rows(value: bytes) -> tuple[Key, Row] | None:
    r = orjson.loads(value)
    if str(r.get("key", "")).startswith("~flush"):
        return None
    cid, vid, ch = r["key"].split("|")
    return (cid, vid, ch, r["start"]), [r["views"], r["clicks"], r["purchases"], r["revenue"]]


def _pulse_rows(value: bytes) -> tuple[Key, Row] | None:
    r = orjson.loads(value)
    key = (r["campaign_id"], r["variant_id"] or "", r["channel"], r["window_start"])
    return key, [r["views"], r["clicks"], r["purchases"], r["revenue"]]


async def _wait_results(
    reader: TopicReader,
    truth: dict[Key, Row],
    parse: Callable[[bytes], tuple[Key, Row] | None],
    timeout_s: float,
    settle_s: float = 2.0,
    quiet_s: float | None = None,
    alive: Callable[[], str | None] | None = None,
) -> tuple[dict[Key, Row], int, float]:
    """Read records until every ground-truth key is there (then ``settle_s`` more) or timeout.

    With ``quiet_s``, also stop once records have arrived and none came for that long
    (a system that lost some windows never completes). ``alive`` returns why the
    system under test is gone (raises then), or None. Returns the records by key, the
    number of repeated keys, and when the set was complete (else when the last came).
    """
    deadline = time.monotonic() + timeout_s
    last_new = time.monotonic()
    start_len = len(reader.items)
    wanted = set(truth)
    got: dict[Key, Row] = {}
    dups = 0
    done_at: float | None = None
    i = 0
    while True:
        items = reader.items
        if i < len(items):
            last_new = time.monotonic()
        while i < len(items):
            parsed = parse(items[i][2])
            i += 1
            if parsed is None:
                continue
            key, row = parsed
            if key in got:
                dups += 1
            got[key] = row
        now = time.monotonic()
        if done_at is None and wanted <= got.keys():
            done_at = now
        if (done_at is not None and now - done_at >= settle_s) or now > deadline:
            return got, dups, done_at or last_new
        if quiet_s is not None and len(items) > start_len and now - last_new >= quiet_s:
            return got, dups, last_new
        if alive is not None and (why := alive()) is not None:
            raise RuntimeError(why)
        await asyncio.sleep(0.2)


def _died(proc: subprocess.Popen[bytes], tmp: Path, name: str) -> Callable[[], str | None]:
    def why() -> str | None:
        if proc.poll() is None:
            return None
        return f"{name} exited with code {proc.returncode}: ...{_tail(tmp, name)[-600:]}"

    return why


def _tail(tmp: Path, name: str) -> str:
    with contextlib.suppress(OSError):
        return (tmp / f"{name}.log").read_text(errors="replace")[-1500:]
    return ""


# --------------------------------------------------------------------- (b) Pulse


def pulse_env(bootstrap: str, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env.update(
        PULSE_KAFKA_BOOTSTRAP=bootstrap,
        PULSE_TOPIC_PREFIX="bench.",
        PULSE_APP_ID=f"bench-pulse-{uuid.uuid4().hex[:6]}",
        PULSE_WINDOW=f"{WINDOW_MS // 1000}s",
        PULSE_GRACE=f"{GRACE_MS // 1000}s",
        PULSE_PARTITIONS=str(PARTITIONS),
        PULSE_WEB_PORT=str(free_port()),
        PULSE_LOG_LEVEL="warning",
        PULSE_DATA_DIR=str(tmp / "pulse"),
    )
    return env


async def pulse_start(env: dict[str, str], tmp: Path) -> tuple[subprocess.Popen[bytes], float]:
    proc = start_worker(env, tmp / "pulse.log", cwd=ROOT)
    url = f"http://127.0.0.1:{env['PULSE_WEB_PORT']}"
    try:
        ready = await asyncio.to_thread(
            wait_ready, url, proc, 120, 0.1, lambda: f": {_tail(tmp, 'pulse')}"
        )
    except WorkerNotReady:
        stop_worker(proc)
        raise
    return proc, ready


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the worker (``--profile``), when py-spy is installed."""
    found = shutil.which("py-spy")
    exe = Path(found) if found else QUIX_VENV / "bin" / "py-spy"
    if not exe.exists():
        log("--profile: py-spy not found (pip install py-spy); profiling skipped")
        return None
    cmd = [str(exe), "record", "--pid", str(pid), "--rate", "100", "--nonblocking"]
    cmd += ["--format", "raw", "--output", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def profile_summary(folded: Path, top: int = 15) -> list[str]:
    """Self and inclusive shares per function from py-spy's folded stacks."""
    self_n: dict[str, int] = {}
    incl_n: dict[str, int] = {}
    total = 0
    for line in folded.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_short_frame(f) for f in stack.split(";")]
        self_n[frames[-1]] = self_n.get(frames[-1], 0) + n
        for f in set(frames):
            incl_n[f] = incl_n.get(f, 0) + n
    if not total:
        return ["PROFILE no samples"]
    out = [f"PROFILE {total} samples of the worker during the drain (py-spy, 100 Hz)"]
    for title, table in (("self", self_n), ("incl", incl_n)):
        for f, n in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            out.append(f"PROFILE {title} {100 * n / total:5.1f}%  {f}")
    return out


def _short_frame(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py)`` with the package dir kept."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    elif str(ROOT) in path:
        parts = Path(path).relative_to(ROOT).parts
    return f"{name} ({'/'.join(parts[-2:])})"


async def pulse_drain(
    settings: Settings,
    proc: subprocess.Popen[bytes],
    t_ready: float,
    work: Workload,
    tmp: Path,
    profile: Path | None = None,
) -> dict[str, Any]:
    n = len(work.records)
    topic = settings.topic("events")
    profiler = start_profiler(proc.pid, profile) if profile is not None else None
    c_ready = cpu_s(proc.pid)
    async with LagProbe(settings.kafka_bootstrap) as probe:
        while True:
            if (why := _died(proc, tmp, "pulse")()) is not None:
                raise RuntimeError(why)
            lag = await probe.lag(settings.app_id, [topic])
            if lag == 0:
                t_done, c_done = time.monotonic(), cpu_s(proc.pid)
                break
            if time.monotonic() - t_ready > 1800:
                raise TimeoutError(f"pulse group lag still {lag} after 1800 s")
            await asyncio.sleep(0.25)
    drain_s = t_done - t_ready
    profile_lines: list[str] = []
    if profiler is not None and profile is not None:
        profiler.send_signal(signal.SIGINT)
        try:
            profiler.wait(60)
            profile_lines = profile_summary(profile)
        except subprocess.TimeoutExpired:
            profiler.kill()
        for line in profile_lines:
            print(line, flush=True)
    log(f"pulse: drained {n} events in {drain_s:.1f} s; waiting for the idle close of the last")
    log(f"pulse: windows (window + grace = {(WINDOW_MS + GRACE_MS) / 1000:.0f} s of wall clock)")
    reader = await TopicReader(settings.kafka_bootstrap, settings.topic("metrics")).start()
    try:
        timeout = (WINDOW_MS + GRACE_MS) / 1000 + 90
        got, dups, t_complete = await _wait_results(
            reader, work.truth, _pulse_rows, timeout, alive=_died(proc, tmp, "pulse")
        )
    finally:
        await reader.stop()
    return {
        "events": n,
        "seconds": round(drain_s, 3),
        "rate": n / drain_s,
        "cpu_us_per_event": 1e6 * (c_done - c_ready) / n,
        "results_complete_after_drain_s": round(t_complete - t_done, 3),
        "check": compare(work.truth, got, dups),
        "profile": profile_lines,
    }


# --------------------------------------------------------------------- live latency


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
    died = _died(proc, tmp, "pulse")
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
                parsed = _pulse_rows(value)
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
        parsed = _pulse_rows(value)
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


# --------------------------------------------------------------------- main


@dataclass
class Results:
    events: int
    parts: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


async def attempt(res: Results, name: str, coro: Any) -> Any:
    try:
        out = await coro
        res.parts[name] = {k: v for k, v in out.items() if k != "counts"} if out else out
        return out
    except Exception as exc:
        res.failed[name] = f"{type(exc).__name__}: {exc}"[:300]
        log(f"{name}: FAILED: {res.failed[name]}")
        traceback.print_exc()
        return None


def fmt_rate(res: Results, name: str) -> str:
    if name not in res.parts and "run" in res.failed:
        return f"FAILED({res.failed['run'][:80]})"
    if name in res.failed:
        return f"FAILED({res.failed[name][:80]})"
    return f"{res.parts[name]['rate']:.0f} ev/s" if name in res.parts else "n/a"


def ratio(res: Results, a: str, b: str) -> str:
    if a in res.parts and b in res.parts:
        return f"{res.parts[a]['rate'] / res.parts[b]['rate']:.2f}"
    return "n/a"


def exact(res: Results, name: str) -> str:
    if name in res.failed:
        return "FAILED"
    return exact_label((res.parts.get(name) or {}).get("check"))


async def run(args: argparse.Namespace, tmp: Path, res: Results, broker: KafkaBroker) -> None:
    worker: subprocess.Popen[bytes] | None = None
    try:
        env = pulse_env(broker.bootstrap, tmp)
        settings = Settings.from_env(env)
        await ensure_topics(settings)
        for topic in QUIX_RUNS:
            await create_topic(broker.bootstrap, topic, PARTITIONS)
        log(f"generating {args.events} events ...")
        t0 = time.monotonic()
        work = prefill_workload(args.events, args.seed)
        log(
            f"generated in {time.monotonic() - t0:.1f} s; ground truth: {len(work.truth)} "
            "campaign × variant × channel × window keys"
        )
        topics = [settings.topic("events"), *QUIX_RUNS]
        rate = await prefill(broker.bootstrap, topics, work.records)
        log(f"prefill done ({rate:.0f} records/s written)")

        log("(a) raw aiokafka consumer ...")
        raw = await attempt(
            res, "raw", raw_drain(broker.bootstrap, settings.topic("events"), len(work.records))
        )
        if raw is not None:
            res.parts["raw"]["check"] = compare(work.truth, raw["counts"])
            log(f"raw: {raw['rate']:.0f} ev/s, exact: {exact(res, 'raw')}")

        for topic, (part, grace_ms) in QUIX_RUNS.items():
            if args.skip_quix:
                res.failed[part] = "skipped (--skip-quix)"
                continue
            log(f"(c) Quix Streams, grace {grace_ms / 1000:.0f} s, on {topic} ...")
            run_q = quix_run(broker.bootstrap, topic, grace_ms, work, tmp, args.timeout)
            if await attempt(res, part, run_q) is not None:
                log(f"{part}: {fmt_rate(res, part)}, exact: {exact(res, part)}")

        log("(b) Pulse worker ...")
        try:
            worker, t_ready = await pulse_start(env, tmp)
        except Exception as exc:
            res.failed["pulse"] = f"{type(exc).__name__}: {exc}"[:300]
            res.failed["live"] = "no worker"
            log(f"pulse: FAILED: {res.failed['pulse']}")
            return
        profile = RESULTS / f"pulse-drain-{STAMP}.folded" if args.profile else None
        await attempt(res, "pulse", pulse_drain(settings, worker, t_ready, work, tmp, profile))
        if "pulse" in res.parts:
            log(f"pulse: {fmt_rate(res, 'pulse')}, exact: {exact(res, 'pulse')}")

        if args.live_seconds <= 0:
            res.failed["live"] = "skipped (--live-seconds 0)"
            return
        log(f"live: {args.live_rate:.0f} ev/s for {args.live_seconds:.0f} s (event time = now)")
        await attempt(
            res,
            "live",
            live_latency(settings, worker, tmp, args.live_rate, args.live_seconds, args.seed + 1),
        )
    finally:
        if worker is not None:
            stop_worker(worker)


def summary(res: Results) -> list[str]:
    live = res.parts.get("live")
    if live:
        lat = (
            f"latency p50/p99 pulse={live['pulse_latency_p50']:.2f}/"
            f"{live['pulse_latency_p99']:.2f} s raw={live['raw_latency_p50']:.2f}/"
            f"{live['raw_latency_p99']:.2f} s"
        )
        lines_extra = [
            f"BENCH-LIVE rate={live['rate']:.0f} ev/s for {live['seconds']:.0f} s "
            f"windows={live['windows']} pulse_records={live['pulse_records']} "
            f"window-visible (visible - window_end) p50/p99 "
            f"pulse={live['pulse_visible_p50']:.2f}/{live['pulse_visible_p99']:.2f} s "
            f"raw={live['raw_visible_p50']:.2f}/{live['raw_visible_p99']:.2f} s "
            f"exact: pulse={exact_label(live['pulse_check'])} "
            f"raw={exact_label(live['raw_check'])}"
        ]
    else:
        lat = f"latency FAILED({res.failed.get('live', 'not run')[:80]})"
        lines_extra = []
    for part in ("quix", "quix_g5"):
        q = res.parts.get(part)
        if q:
            lines_extra.append(
                f"BENCH-QUIX {part} grace={q['grace_ms'] / 1000:.0f} s: {q['rate']:.0f} ev/s "
                f"late_dropped={q.get('late_dropped')} exact={exact(res, part)} "
                f"results_complete_after_flush={q.get('results_complete_after_flush_s')} s"
            )
        elif part in res.failed:
            lines_extra.append(f"BENCH-QUIX {part}: FAILED({res.failed[part]})")
    pulse = res.parts.get("pulse")
    if pulse:
        lines_extra.append(
            f"BENCH-PULSE drain={pulse['seconds']:.1f} s, last windows (idle close) complete "
            f"{pulse['results_complete_after_drain_s']:.1f} s after the drain"
        )
    main_line = (
        f"BENCH events={res.events} raw={fmt_rate(res, 'raw')} pulse={fmt_rate(res, 'pulse')} "
        f"quix={fmt_rate(res, 'quix')} pulse/raw={ratio(res, 'pulse', 'raw')} "
        f"pulse/quix={ratio(res, 'pulse', 'quix')} exact: raw={exact(res, 'raw')} "
        f"pulse={exact(res, 'pulse')} quix={exact(res, 'quix')} | {lat}"
    )
    cpu = {n: (res.parts.get(n) or {}).get("cpu_us_per_event") for n in ("raw", "pulse", "quix")}
    cpu_line = "BENCH-CPU µs of CPU per event: " + " ".join(
        f"{n}={v:.1f}" if v else f"{n}=n/a" for n, v in cpu.items()
    )
    for a, b in (("pulse", "raw"), ("pulse", "quix")):
        ca, cb = cpu[a], cpu[b]
        if ca and cb:
            cpu_line += f" {a}/{b}={cb / ca:.2f}"  # as a rate ratio: higher = faster
    return [main_line, cpu_line, *lines_extra]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="200,000 events, 70 s live phase")
    ap.add_argument("--events", type=int, default=None, help="default 1,000,000 (quick 200,000)")
    ap.add_argument("--live-rate", type=float, default=2000.0)
    ap.add_argument("--live-seconds", type=float, default=None, help="default 130 (quick 70)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--timeout", type=float, default=1800.0, help="max drain time per system")
    ap.add_argument("--skip-quix", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temporary dir (logs, data)")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="sample the Pulse worker with py-spy (pip install py-spy) while it drains",
    )
    args = ap.parse_args()
    if args.events is None:
        args.events = 200_000 if args.quick else 1_000_000
    if args.live_seconds is None:
        args.live_seconds = 70.0 if args.quick else 130.0

    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="pulse-bench-wc-"))
    res = Results(events=args.events)
    broker = KafkaBroker(port=free_port(), data_dir=tmp / "kafka", heap="1g")
    try:
        log("starting Kafka ...")
        broker.start()  # not inside asyncio.run: it runs its own loop for the readiness probe
        asyncio.run(run(args, tmp, res, broker))
    except Exception as exc:
        log(f"benchmark aborted: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        res.failed.setdefault("run", f"{type(exc).__name__}: {exc}"[:300])
    finally:
        broker.stop()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    out = RESULTS / f"windowed_counts-{STAMP}.json"
    out.write_text(
        json.dumps({"events": res.events, "parts": res.parts, "failed": res.failed}, indent=2)
    )
    print()
    for line in summary(res):
        print(line, flush=True)
    print(f"(details: {out.relative_to(ROOT)})", flush=True)


if __name__ == "__main__":
    main()
