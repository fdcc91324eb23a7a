"""(b) Pulse: one ``pulse worker`` drains the topic; optional py-spy profile (``--profile``)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from bench.common import ROOT, LagProbe, TopicReader, cpu_s, log
from bench.windowed_counts.check import compare, exit_check, log_tail, wait_results
from bench.windowed_counts.quix import QUIX_VENV
from bench.windowed_counts.workload import GRACE_MS, PARTITIONS, WINDOW_MS, Key, Row, Workload
from stream.config import Settings
from stream.tools.broker import free_port
from stream.tools.workerproc import WorkerNotReady, start_worker, stop_worker, wait_ready


def pulse_rows(value: bytes) -> tuple[Key, Row] | None:
    r = orjson.loads(value)
    key = (r["campaign_id"], r["variant_id"] or "", r["channel"], r["window_start"])
    return key, [r["views"], r["clicks"], r["purchases"], r["revenue"]]


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
        PULSE_CURRENCY="EUR",  # the workload's purchases: revenue compared exactly
    )
    return env


async def pulse_start(env: dict[str, str], tmp: Path) -> tuple[subprocess.Popen[bytes], float]:
    proc = start_worker(env, tmp / "pulse.log", cwd=ROOT)
    url = f"http://127.0.0.1:{env['PULSE_WEB_PORT']}"
    try:
        ready = await asyncio.to_thread(
            wait_ready, url, proc, 120, 0.1, lambda: f": {log_tail(tmp, 'pulse')}"
        )
    except WorkerNotReady:
        stop_worker(proc)
        raise
    return proc, ready


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the worker (``--profile``; the dev extras install it)."""
    here = Path(sys.executable).parent / "py-spy"  # the venv's, also when not activated
    found = shutil.which("py-spy")
    exe = here if here.exists() else Path(found) if found else QUIX_VENV / "bin" / "py-spy"
    if not exe.exists():
        log("--profile: py-spy not found (make venv installs it); profiling skipped")
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


def stage_cpu(port: int) -> dict[str, float]:
    """The worker's ``pulse_stage_cpu_seconds_total`` per stage, in seconds."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        s.labels["stage"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "pulse_stage_cpu_seconds_total"
    }


def stage_table(
    before: dict[str, float], after: dict[str, float], cpu_s: float, n: int
) -> dict[str, float]:
    """µs of CPU per event by stage over a drain; ``rest`` = the worker's CPU outside
    every stage (Kafka fetching and delivery, transactions, the event loop)."""
    table = {k: 1e6 * (after.get(k, 0.0) - v) / n for k, v in before.items()}
    table["rest"] = 1e6 * cpu_s / n - sum(table.values())
    return {k: round(v, 2) for k, v in table.items()}


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
    stages_ready = await asyncio.to_thread(stage_cpu, settings.web_port)
    async with LagProbe(settings.kafka_bootstrap) as probe:
        while True:
            if (why := exit_check(proc, tmp, "pulse")()) is not None:
                raise RuntimeError(why)
            lag = await probe.lag(settings.app_id, [topic])
            if lag == 0:
                t_done, c_done = time.monotonic(), cpu_s(proc.pid)
                break
            if time.monotonic() - t_ready > 1800:
                raise TimeoutError(f"pulse group lag still {lag} after 1800 s")
            await asyncio.sleep(0.25)
    drain_s = t_done - t_ready
    stages = stage_table(
        stages_ready, await asyncio.to_thread(stage_cpu, settings.web_port), c_done - c_ready, n
    )
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
        got, dups, t_complete = await wait_results(
            reader, work.truth, pulse_rows, timeout, alive=exit_check(proc, tmp, "pulse")
        )
    finally:
        await reader.stop()
    return {
        "events": n,
        "seconds": round(drain_s, 3),
        "rate": n / drain_s,
        "cpu_us_per_event": 1e6 * (c_done - c_ready) / n,
        "stages_us_per_event": stages,
        "results_complete_after_drain_s": round(t_complete - t_done, 3),
        "check": compare(work.truth, got, dups),
        "profile": profile_lines,
    }
