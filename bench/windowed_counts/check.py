"""Comparing a system's window records with the ground truth, and waiting for them."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import TopicReader
from bench.windowed_counts.workload import Key, Row


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


async def wait_results(
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


def exit_check(proc: subprocess.Popen[bytes], tmp: Path, name: str) -> Callable[[], str | None]:
    def why() -> str | None:
        if proc.poll() is None:
            return None
        return f"{name} exited with code {proc.returncode}: ...{log_tail(tmp, name)[-600:]}"

    return why


def log_tail(tmp: Path, name: str) -> str:
    with contextlib.suppress(OSError):
        return (tmp / f"{name}.log").read_text(errors="replace")[-1500:]
    return ""
