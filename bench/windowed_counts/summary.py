"""Per-part results, FAILED bookkeeping and the BENCH summary lines."""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any

from bench.common import log
from bench.windowed_counts.check import exact_label


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
    if pulse and pulse.get("stages_us_per_event"):
        lines_extra.append(
            "BENCH-STAGES pulse µs of CPU per event: "
            + " ".join(f"{k}={v:.1f}" for k, v in pulse["stages_us_per_event"].items())
        )
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
