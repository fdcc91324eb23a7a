"""Memory and speed of the dedup index with a 24 h TTL, no broker.

    .venv/bin/python -m bench.dedup_memory [N]      # default 5,000,000 ids; QUICK=1: 1,000,000
    .venv/bin/python -m bench.dedup_memory [N] --store rocksdb [--memory 256MiB]

Fills one deduplicator with N UUID4 ids in batches of 1,000 over 4 partitions,
first sightings spread over 20 h, draining the changelog records of every batch
to a temporary file; then prints the index size and the process RSS growth per
id (VmRSS before and after, after ``gc.collect()``), the time of ``check()`` per
id, and the time to restore all records into a fresh deduplicator per id, one
figure a line.

``--store memory`` (the default) measures :class:`stream.core.dedup.Deduplicator`
(full ids on disk in a temporary directory); ``--store rocksdb`` measures
:class:`stream.core.dedup_rocks.RocksDeduplicator` inside a
:class:`~stream.core.rocks_budget.RocksBudget` of ``--memory`` bytes, and also
prints the RSS growth in MiB against the budget (after the fill, its peak, and
after the restore): it should stay under the budget plus a small fixed overhead
whatever N.
"""

from __future__ import annotations

import argparse
import gc
import os
import struct
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.common import rss_mib
from stream.config import parse_size
from stream.core.dedup import Deduplicator
from stream.core.dedup_rocks import RocksDeduplicator
from stream.core.rocks_budget import RocksBudget
from stream.memory import release_free_memory

TTL_MS = 24 * 3_600_000
SPAN_MS = 20 * 3_600_000
PARTITIONS = 4
BATCH = 1_000
_LEN = struct.Struct("<qI")


def records(path: Path) -> Iterator[tuple[int, bytes]]:
    """The ``(timestamp_ms, value)`` records spilled to ``path``, in log order."""
    with path.open("rb") as f:
        while head := f.read(_LEN.size):
            ts, size = _LEN.unpack(head)
            yield ts, f.read(size)


def peak_mib() -> float:
    """The peak resident set size of this process (VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench.dedup_memory", description=__doc__)
    parser.add_argument("n", nargs="?", type=int, help="ids (default 5,000,000; QUICK=1: 1M)")
    parser.add_argument("--store", choices=["memory", "rocksdb"], default="memory")
    parser.add_argument("--memory", type=parse_size, default="256MiB", help="RocksDB budget")
    args = parser.parse_args(argv)
    n = args.n or (1_000_000 if os.environ.get("QUICK") else 5_000_000)
    rocks = args.store == "rocksdb"
    batches = max(1, n // BATCH)
    n = batches * BATCH
    step_ms = SPAN_MS // batches
    parts = [i % PARTITIONS for i in range(BATCH)]
    offsets = [0] * PARTITIONS
    sample: list[tuple[str, int, int]] = []
    with tempfile.TemporaryDirectory(prefix="dedup-bench-") as tmp:
        logs = [Path(tmp) / f"log-{p}.bin" for p in range(PARTITIONS)]
        spills = [p.open("wb") for p in logs]
        gc.collect()
        rss_before = rss_mib(os.getpid())
        make: Callable[[str], Any]
        if rocks:
            budget = RocksBudget(args.memory)

            def make(name: str) -> Any:
                return RocksDeduplicator(TTL_MS, Path(tmp) / name, budget)

        else:

            def make(name: str) -> Any:
                return Deduplicator(TTL_MS, Path(tmp) / name)

        d = make("ids")
        check_s = 0.0
        now = 0
        for b in range(batches):
            ids = [str(uuid.uuid4()) for _ in range(BATCH)]
            offs = []
            for p in parts:
                offs.append(offsets[p])
                offsets[p] += 1
            t0 = time.perf_counter()
            d.check(ids, parts, offs, now)
            check_s += time.perf_counter() - t0
            d.expire(now)
            for p, value in d.drain_records().items():
                spills[p].write(_LEN.pack(now, len(value)) + value)
            if b % 97 == 0:
                sample.append((ids[b % BATCH], parts[b % BATCH], offs[b % BATCH]))
            now += step_ms
        for f in spills:
            f.close()
        gc.collect()
        release_free_memory()  # as the worker does after an expiry or a restore
        rss_after = rss_mib(os.getpid())
        assert len(d) == n, (len(d), n)
        print(f"ids: {n:,}")
        if rocks:
            budget_mib = args.memory / 2**20
            print(f"store: rocksdb, budget {budget_mib:.0f} MiB")
            print(f"index: {d.index_bytes() / 2**20:.1f} MiB (the budget's cache in use)")
        else:
            print(f"index: {d.index_bytes() / n:.1f} B/id")
        print(f"rss growth: {(rss_after - rss_before) * 2**20 / n:.1f} B/id")
        if rocks:
            print(
                f"rss growth: {rss_after - rss_before:.0f} MiB after the fill, "
                f"{peak_mib() - rss_before:.0f} MiB at the peak (budget {budget_mib:.0f} MiB)"
            )
        print(f"check: {check_s / n * 1e6:.2f} µs/id")
        d.close()
        del d
        gc.collect()

        r = make("restored")
        t0 = time.perf_counter()
        restored = sum(r.restore(p, records(logs[p]), now) for p in range(PARTITIONS))
        restore_s = time.perf_counter() - t0
        release_free_memory()
        assert restored == n == len(r), (restored, n, len(r))
        for event_id, p, o in sample:
            assert r.is_duplicate(event_id, p, o + 1, now) and not r.is_duplicate(
                event_id, p, o, now
            )
        print(f"restore: {restore_s / n * 1e6:.2f} µs/id ({restore_s:.1f} s)")
        if rocks:
            gc.collect()
            print(
                f"rss growth: {rss_mib(os.getpid()) - rss_before:.0f} MiB after the restore, "
                f"{peak_mib() - rss_before:.0f} MiB at the peak (budget {budget_mib:.0f} MiB)"
            )
        r.close()


if __name__ == "__main__":
    main(sys.argv[1:])
