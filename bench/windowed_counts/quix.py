"""(c) Quix Streams: ``bench/quix_app.py`` in its own venv (``bench/.venv-quix``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from bench.common import ROOT, LagProbe, TopicReader, cpu_s, log
from bench.windowed_counts.check import compare, exit_check, log_tail, wait_results
from bench.windowed_counts.produce import fast_producer, send_partitioned
from bench.windowed_counts.workload import (
    GRACE_MS,
    JITTER_MS,
    PARTITIONS,
    SPAN_MS,
    WINDOW_MS,
    Key,
    Row,
    Workload,
)
from stream.tools.workerproc import stop_worker

QUIX_VENV = ROOT / "bench" / ".venv-quix"
QUIX_VERSION = "3.28.1"
#: Quix runs: input topic -> (result name, grace). "quix" has a grace covering the whole
#: replay, so no event can be late whatever order its partitions are read in (the
#: configuration in which Quix counts exactly); "quix_g5" has Pulse's grace.
QUIX_RUNS = {
    "quix.events": ("quix", SPAN_MS + 2 * JITTER_MS + WINDOW_MS),
    "quix-g5.events": ("quix_g5", GRACE_MS),
}


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
                    f"the Quix app exited with {proc.returncode}: {log_tail(tmp, name)}"
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
                        f"the Quix app exited with {proc.returncode}: {log_tail(tmp, name)}"
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
        got, dups, t_complete = await wait_results(
            reader, work.truth, _quix_rows, 180.0, quiet_s=15.0, alive=exit_check(proc, tmp, name)
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
