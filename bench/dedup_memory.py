"""Memory and speed of :class:`stream.core.dedup.Deduplicator` with a 24 h TTL, no broker.

    .venv/bin/python -m bench.dedup_memory [N]      # default 5,000,000 ids; QUICK=1: 1,000,000

Fills one deduplicator (ids on disk in a temporary directory) with N UUID4 ids
in batches of 1,000 over 4 partitions, first sightings spread over 20 h, draining
the changelog records of every batch to a temporary file; then prints the index
size and the process RSS growth per id (VmRSS before and after, after
``gc.collect()``), the time of ``check()`` per id, and the time to restore all
records into a fresh deduplicator per id, one figure a line.
"""

from __future__ import annotations

import gc
import os
import struct
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from bench.common import rss_mib
from stream.core.dedup import Deduplicator

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


def main(argv: list[str]) -> None:
    n = int(argv[0]) if argv else 1_000_000 if os.environ.get("QUICK") else 5_000_000
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
        d = Deduplicator(TTL_MS, Path(tmp) / "ids")
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
        rss_after = rss_mib(os.getpid())
        assert len(d) == n, (len(d), n)
        print(f"ids: {n:,}")
        print(f"index: {d.index_bytes() / n:.1f} B/id")
        print(f"rss growth: {(rss_after - rss_before) * 2**20 / n:.1f} B/id")
        print(f"check: {check_s / n * 1e6:.2f} µs/id")
        d.close()
        del d
        gc.collect()

        r = Deduplicator(TTL_MS, Path(tmp) / "restored")
        t0 = time.perf_counter()
        restored = sum(r.restore(p, records(logs[p]), now) for p in range(PARTITIONS))
        restore_s = time.perf_counter() - t0
        assert restored == n == len(r), (restored, n, len(r))
        for event_id, p, o in sample:
            assert r.is_duplicate(event_id, p, o + 1, now) and not r.is_duplicate(
                event_id, p, o, now
            )
        print(f"restore: {restore_s / n * 1e6:.2f} µs/id ({restore_s:.1f} s)")
        r.close()


if __name__ == "__main__":
    main(sys.argv[1:])
