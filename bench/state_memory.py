"""State memory: bytes per remembered event id and per active user, and the RAM formula.

    .venv/bin/python -m bench.state_memory                # in-process, about a minute
    .venv/bin/python -m bench.state_memory --worker --events 200000 --grid 20x10000

In-process (the default) builds the real stages (``Pipeline(...).stages()``) and
feeds raw records, each phase to a fresh stage after the same warm-up, measuring
the growth of this process's RSS (after ``gc.collect()``) and the lengths and
deep sizes (``sys.getsizeof`` followed through containers) of the structures:

1. ``warm``: views of 500 known users, each with a new event id → bytes per id
   (``len(stage.ingestor.dedup)``, whatever the dedup keeps);
2. ``viewers``: one view each of new users → bytes per active user;
3. ``clickers``: a view and a click each of new users → extra bytes per click in
   flight (pending label with its features, last click, engagement);
4. simulated :class:`~stream.core.simulator.Simulator` traffic (views, clicks,
   purchases of U users on C campaigns): measured RSS growth against the formula.

The users' RSS is net of a ``warm`` phase with as many events (the same ids
count, so the dedup grows alike). Stages are kept alive so no phase reuses
memory another freed. It prints markdown (for the README) ending with
``RAM ≈ base + ids × B_id + users × B_user + clicks × B_click``. Nothing expires
during a run (event time advances minutes, TTLs are hours); in steady state ids
= rate × dedup TTL, users = distinct users active within the user TTL
(max(attribution, 48 h)) and clicks = clicks within the attribution window.

``--worker`` keeps the broker mode: for each grid point it pre-fills a fresh
topic prefix with simulated traffic (C campaigns, U users), drains it with one
``pulse worker`` and prints the worker's VmRSS after the drain.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
import types
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from stream.core.ingest import RawRecord
from stream.core.pipeline import PartitionStage, Pipeline, PipelineConfig
from stream.core.propensity import PropensityModel
from stream.core.simulator import DEFAULT_START_MS, SimConfig, Simulator
from stream.core.windows import PartitionWindows

PARTITIONS = 4
BATCH = 2_000
MIB = 2**20


def rss_bytes() -> int:
    """This process's resident set size after a full collection (/proc/self/status)."""
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def deep_size(obj: Any, seen: set[int]) -> int:
    """``sys.getsizeof`` of ``obj`` and of everything it holds, once each.

    Follows containers and instance attributes (``__dict__``, ``__slots__``), not
    classes, modules or functions; a NumPy array counts its buffer when it owns
    it. Objects already in ``seen`` count 0 (measure structures in order with
    one ``seen`` to count a shared user-id string once).

    >>> s: set[int] = set()
    >>> deep_size(["ab", "ab"], s) == sys.getsizeof(["ab", "ab"]) + sys.getsizeof("ab")
    True
    """
    total = 0
    stack = [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, list | tuple | set | frozenset | deque):
            stack.extend(o)
        elif not isinstance(o, _OPAQUE):
            if hasattr(o, "__dict__"):
                stack.append(vars(o))
            for cls in type(o).__mro__:
                for name in getattr(cls, "__slots__", ()):
                    if hasattr(o, name):
                        stack.append(getattr(o, name))
    return total


_OPAQUE = (type, types.ModuleType, types.FunctionType, types.MethodType, str, bytes, int, float)


@dataclass
class Feed:
    """Raw records for one stage, with per-partition offsets and advancing event time."""

    stage: PartitionStage
    t: int = DEFAULT_START_MS
    n: int = 0

    def __post_init__(self) -> None:
        self.offsets = [0] * PARTITIONS

    def record(self, etype: str, user: str, campaign: str) -> RawRecord:
        self.n += 1
        self.t += 1  # 1 ms apart: nothing reaches a TTL during a run
        event = {
            "event_id": f"e-{self.n:010d}",
            "type": etype,
            "event_time": self.t,
            "user_id": user,
            "campaign_id": campaign,
            "channel": "web",
            "consent": {"marketing": True},
        }
        return self.raw(user.encode(), orjson.dumps(event), self.t)

    def raw(self, key: bytes | None, value: bytes, ts: int) -> RawRecord:
        p = zlib.crc32(key or b"") % PARTITIONS
        self.offsets[p] += 1
        return key, value, p, self.offsets[p], ts

    def run(self, records: Iterable[RawRecord]) -> None:
        """Process ``records`` in batches, closing what the watermark allows after each."""
        batch: list[RawRecord] = []
        for rec in records:
            batch.append(rec)
            if len(batch) >= BATCH:
                self._batch(batch)
                batch = []
        if batch:
            self._batch(batch)

    def _batch(self, batch: list[RawRecord]) -> None:
        self.stage.process(batch, None)
        self.stage.close(range(PARTITIONS))


def structures(stage: PartitionStage) -> dict[str, Callable[[], list[Any]]]:
    """Per-user structures by name: each gives its containers over all partitions."""

    def models() -> list[PropensityModel]:
        return list(stage.models.values())

    def windows() -> list[PartitionWindows]:
        return list(stage.windows.values())

    return {
        "model.users": lambda: [m.users for m in models()],
        "model.segments": lambda: [m.segments for m in models()],
        "windows.last_click": lambda: [w.last_click for w in windows()],
        "model.pending": lambda: [m.pending for m in models()],
        "model.pending_users": lambda: [m.pending_users for m in models()],
        "model.engaged": lambda: [m.engaged for m in models()],
        "model.last_offer": lambda: [m.last_offer for m in models()],
    }


def measure(stage: PartitionStage) -> dict[str, tuple[int, int]]:
    """(entries, deep bytes) per structure, strings shared between them counted once."""
    seen: set[int] = set()
    dedup = stage.ingestor.dedup
    out = {"dedup": (len(dedup), deep_size(dedup, seen))}
    for name, parts in structures(stage).items():
        containers = parts()
        out[name] = (sum(len(c) for c in containers), sum(deep_size(c, seen) for c in containers))
    return out


def offer_entry_bytes(n: int = 10_000) -> float:
    """Deep bytes per ``last_offer`` entry (user id → ms), from a dict of that shape."""
    d = {f"u-{i:08d}": DEFAULT_START_MS + i for i in range(n)}
    return deep_size(d, set()) / n


@dataclass
class Phase:
    rss: int  # RSS growth in bytes
    ids: int  # new remembered event ids
    sizes: dict[str, tuple[int, int]]  # growth of (entries, deep bytes) per structure
    took: float  # seconds
    stage: PartitionStage  # kept alive: memory it freed would be reused by later phases


def phase(cfg: PipelineConfig, campaigns: int, kind: str, n: int) -> Phase:
    """Feed a fresh, warmed-up stage ``n`` of ``kind``; measure the growth.

    ``warm``: views of 500 known users (new ids, no new user); ``viewers``: one
    view each of new users; ``clickers``: a view and a click each of new users.
    Every phase starts from the same warm-up, so a fresh dedup is in the same
    state (its memory may grow in steps) and differences between phases are
    the users' cost.
    """
    stage, _merge = Pipeline(cfg).stages()
    feed = Feed(stage)
    cids = [f"cmp-{i:03d}" for i in range(campaigns)]
    warm = [f"w-{i:05d}" for i in range(500)]

    def views_of_warm(k: int) -> Iterator[RawRecord]:
        for i in range(k):
            yield feed.record("view", warm[i % len(warm)], cids[i % len(cids)])

    def new_users(prefix: str, k: int, click: bool) -> Iterator[RawRecord]:
        for i in range(k):
            user, cid = f"{prefix}-{i:08d}", cids[i % len(cids)]
            yield feed.record("view", user, cid)
            if click:
                yield feed.record("click", user, cid)

    # warm-up: models, windows, allocator arenas of a batch's transients
    feed.run(views_of_warm(2 * BATCH))
    feed.run(new_users("warm", BATCH, click=True))
    records = {
        "warm": lambda: views_of_warm(n),
        "viewers": lambda: new_users("v", n, click=False),
        "clickers": lambda: new_users("c", n, click=True),
    }[kind]()
    before_rss, before_ids, before = rss_bytes(), len(stage.ingestor.dedup), measure(stage)
    t0 = time.perf_counter()
    feed.run(records)
    took = time.perf_counter() - t0
    after_rss, after_ids, after = rss_bytes(), len(stage.ingestor.dedup), measure(stage)
    sizes = {k: (after[k][0] - before[k][0], after[k][1] - before[k][1]) for k in after}
    return Phase(after_rss - before_rss, after_ids - before_ids, sizes, took, stage)


@dataclass
class Simulated:
    took: float
    rss: int
    sizes: dict[str, tuple[int, int]]


def simulated(cfg: PipelineConfig, args: argparse.Namespace) -> Simulated:
    """Simulator traffic through a fresh stage: RSS growth and structure sizes.

    Memory freed before it would be reused and hide growth: keep other stages alive.
    """
    stage, _merge = Pipeline(cfg).stages()
    feed = Feed(stage)
    sim = Simulator(
        SimConfig(
            rate=args.rate,
            duration_s=args.duration,
            campaigns=args.campaigns,
            users=args.users,
            seed=11,
            duplicate_share=0.0,
            late_share=0.0,
            malformed_share=0.0,
        )
    )
    records = [  # generated up front: the simulator's own memory is not the stage's
        feed.raw(it.key, it.value, DEFAULT_START_MS + b.at_ms)
        for b in sim.batches(batch_ms=1000)
        for it in b.items
    ]
    start = rss_bytes()
    t0 = time.perf_counter()
    feed.run(records)
    took = time.perf_counter() - t0
    return Simulated(took, rss_bytes() - start, measure(stage))


def in_process(args: argparse.Namespace) -> None:
    cfg = PipelineConfig.load(window_ms=60_000, grace_ms=5_000, partitions=PARTITIONS)
    Feed(Pipeline(cfg).stages()[0]).run([])  # imports
    base = rss_bytes()
    ids = phase(cfg, args.campaigns, "warm", args.ids)
    viewers = phase(cfg, args.campaigns, "viewers", args.viewers)
    clickers = phase(cfg, args.campaigns, "clickers", args.clickers)
    controls = {n: phase(cfg, args.campaigns, "warm", n) for n in {viewers.ids, clickers.ids}}
    t_ids, t_v, t_c = ids.took, viewers.took, clickers.took
    stage = ids.stage

    b_id = ids.rss / ids.ids
    deep_id = ids.sizes["dedup"][1] / ids.ids
    b_user = (viewers.rss - controls[viewers.ids].rss) / args.viewers
    b_click = (clickers.rss - controls[clickers.ids].rss) / args.clickers - b_user
    b_offer = offer_entry_bytes()
    sim = simulated(cfg, args)  # while ``stage`` holds its memory

    print(f"## State memory (in-process, {PARTITIONS} partitions, {args.campaigns} campaigns)\n")
    print(
        f"Phases: {ids.ids:,} new ids in {t_ids:.1f} s, {args.viewers:,} viewing users in "
        f"{t_v:.1f} s, {args.clickers:,} clicking users in {t_c:.1f} s; "
        f"RSS at start {base / MIB:.0f} MiB; each phase on a fresh stage after the same "
        "warm-up, users' RSS net of a phase with as many events of known users.\n"
    )
    print("| state | per | entries added | deep B/entry | RSS B/entry |")
    print("|---|---|--:|--:|--:|")
    print(
        f"| dedup (`{type(stage.ingestor.dedup).__name__}`) | event id | {ids.ids:,} "
        f"| {deep_id:,.0f} | {b_id:,.0f} |"
    )
    per = {"model.users": viewers, "model.segments": viewers}
    for name in structures(stage):  # deep sizes: marginal, a shared user id counted once
        ph = per.get(name, clickers)
        n, size = ph.sizes[name]
        if name == "model.last_offer":
            print(f"| {name} | offered user | – (same-shape dict) | {b_offer:,.0f} | – |")
            continue
        who = "viewing user" if ph is viewers else "clicking user"
        deep = f"{size / n:,.0f}" if n else "–"
        print(f"| {name} | {who} | {n:,} | {deep} | – |")
    deep_user = sum(viewers.sizes[k][1] for k in per) / args.viewers
    extra = [k for k in structures(stage) if k not in per]
    deep_click = sum(clickers.sizes[k][1] for k in extra) / args.clickers
    print(
        f"| **all, per active user** | user | {args.viewers:,} | {deep_user:,.0f} | {b_user:,.0f} |"
    )
    print(
        f"| **all, extra per clicking user** | user | {args.clickers:,} | {deep_click:,.0f} "
        f"| {b_click:,.0f} |"
    )
    print(
        f"\nRAM ≈ base + ids × {b_id:,.0f} B + users × {b_user:,.0f} B "
        f"+ clicks × {b_click:,.0f} B (+ offered users × {b_offer:,.0f} B)\n"
    )
    print(
        "ids = event rate × dedup TTL; users = distinct users active within the user TTL "
        "(max(attribution, 48 h)); clicks = clicks within the attribution window (each waits "
        "there for its label; a user's last click, + grace + window, is kept for attribution); "
        "offered users: offers within the cap + attribution window.\n"
    )
    ex_ids = args.example_rate * cfg.dedup_ttl_ms // 1000
    ex_users = args.example_users * (b_user + 0.3 * b_click)
    print(
        f"Example: {args.example_rate:,} events/s with a {cfg.dedup_ttl_ms // 3_600_000} h dedup "
        f"TTL keeps {ex_ids:,} ids ({ex_ids * b_id / 2**30:.2f} GiB); "
        f"{args.example_users:,} active users with one click in flight per 3 users "
        f"→ {ex_users / 2**30:.2f} GiB; state ≈ {(ex_ids * b_id + ex_users) / 2**30:.2f} GiB "
        f"over all workers, each adding its base (here {base / MIB:.0f} MiB).\n"
    )
    n_ids, n_users, n_clicks = (sim.sizes[k][0] for k in ("dedup", "model.users", "model.pending"))
    predicted = n_ids * b_id + n_users * b_user + n_clicks * b_click
    print(
        f"Simulated traffic ({args.rate:,.0f} events/s for {args.duration:.0f} s, "
        f"{args.users:,} users, {args.campaigns} campaigns, {sim.took:.1f} s to process):\n"
    )
    print("| ids | users | clicks in flight | predicted growth | measured RSS growth |")
    print("|--:|--:|--:|--:|--:|")
    print(
        f"| {n_ids:,} | {n_users:,} | {n_clicks:,} | {predicted / MIB:.1f} MiB "
        f"| {sim.rss / MIB:.1f} MiB |"
    )


# ------------------------------------------------------------------ --worker


async def fill(settings: Any, campaigns: int, users: int, events: int) -> int:
    from stream.kafka.writer import EventWriter

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


def worker(args: argparse.Namespace) -> None:
    """Worker RSS against campaigns × users, on a real local broker."""
    import asyncio

    import httpx

    from bench.common import group_lag, rss_mib, start_ready_worker
    from stream.cli.common import ensure_topics_with_retry
    from stream.config import Settings
    from stream.tools.broker import KafkaBroker, free_port
    from stream.tools.workerproc import stop_worker

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", action="store_true", help="measure pulse worker on a broker")
    ap.add_argument("--ids", type=int, default=300_000, help="new ids of the ids phase")
    ap.add_argument("--viewers", type=int, default=100_000, help="new users of viewers phase")
    ap.add_argument("--clickers", type=int, default=50_000, help="new users of clickers phase")
    ap.add_argument("--campaigns", type=int, default=20)
    ap.add_argument("--users", type=int, default=50_000, help="users of the simulated traffic")
    ap.add_argument("--rate", type=float, default=2_000, help="simulated events/s")
    ap.add_argument("--duration", type=float, default=60, help="simulated seconds")
    ap.add_argument("--example-rate", type=int, default=1_000, help="formula example: events/s")
    ap.add_argument("--example-users", type=int, default=1_000_000)
    ap.add_argument("--events", type=int, default=200_000, help="--worker: events per point")
    ap.add_argument("--grid", default="20x10000,200x100000", help="--worker: CxU points")
    ap.add_argument("--store", default="memory", choices=["memory", "rocksdb"])
    args = ap.parse_args()
    (worker if args.worker else in_process)(args)


if __name__ == "__main__":
    main()
