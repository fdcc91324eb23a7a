"""Soak: one worker under a steady simulated rate for a long time; does memory or lag creep?

    .venv/bin/python -m bench.soak --minutes 20 --rate 2000     # or: make soak
    .venv/bin/python -m bench.soak --store rocksdb

TTLs are compressed (``--dedup-ttl 5m --attribution 5m`` by default), and so is
the window (``--window 4s``: the live page's view keeps the last 120 window
lengths of every campaign, variant and channel series, 2 h of the default 60 s
windows, 8 min of 4 s ones), so the state reaches its plateau
within the run: RSS over the second half must be
flat within 2 % per hour of its level (``PLATEAU PASS``), and the plateau is
extrapolated to a 24 h dedup TTL at 1,000 and 10,000 ev/s (all growth over the
start counted as per-id state, which overstates it).

Starts a local Kafka broker (``stream.tools.broker.KafkaBroker``) and one ``pulse
worker``, drives ``pulse simulate --via kafka`` at ``--rate`` events per second
for ``--minutes``, and every ``--interval`` seconds samples the worker's RSS
(psutil when installed, else ``/proc/<pid>/status``) and its consumer lag (sum
of ``pulse_consumer_lag`` on ``/metrics``). Prints RSS at start and end, the
RSS slope (MiB per hour, least-squares fit over the second half of the run) and
the maximum lag, and writes the samples to ``bench/results/soak-<time>.csv``
(summary next to it as JSON).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.common import RESULTS, ROOT, rss_mib, slope, start_ready_worker
from stream.config import Settings
from stream.tools.broker import KafkaBroker, free_port
from stream.tools.workerproc import stop_worker


def scrape(url: str) -> tuple[float, float]:
    """(consumer lag summed over partitions, valid events processed) from ``/metrics``."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    lag = events = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "pulse_consumer_lag" and s.labels.get("topic", "").endswith("events"):
                lag += s.value
            elif s.name == "pulse_events_total":
                events += s.value
    return lag, events


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--rate", type=float, default=2000.0, help="events per second")
    ap.add_argument("--dedup-ttl", default="5m", help="PULSE_DEDUP_TTL")
    ap.add_argument("--attribution", default="5m", help="PULSE_ATTRIBUTION_WINDOW")
    ap.add_argument(
        "--window",
        default="4s",
        help="PULSE_WINDOW: the live page keeps 120 window lengths per series, 8 min of 4 s",
    )
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--campaigns", type=int, default=20)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--kafka-version", default=None)
    ap.add_argument("--store", choices=["memory", "rocksdb"], default=None, help="PULSE_STORE")
    args = ap.parse_args()

    seconds = args.minutes * 60
    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    csv_path = RESULTS / f"soak-{stamp}.csv"
    tmp = Path(tempfile.mkdtemp(prefix="pulse-soak-"))
    broker = KafkaBroker(port=free_port(), data_dir=tmp / "kafka", version=args.kafka_version)
    broker.start()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(
        os.environ,
        PULSE_KAFKA_BOOTSTRAP=broker.bootstrap,
        PULSE_WEB_PORT=str(port),
        PULSE_APP_ID="pulse-soak",
        PULSE_TOPIC_PREFIX="soak.",
        PULSE_WRITE_KEYS="soak",
        PULSE_DATA_DIR=str(tmp / "data"),
        PULSE_LOG_LEVEL="warning",
        PULSE_DEDUP_TTL=args.dedup_ttl,
        PULSE_ATTRIBUTION_WINDOW=args.attribution,
        PULSE_WINDOW=args.window,
    )
    if args.store:
        env["PULSE_STORE"] = args.store
    worker_log, sim_log = tmp / "worker.log", tmp / "simulate.log"
    worker = sim = None
    samples: list[tuple[float, float, float, float]] = []  # t_s, rss_mib, lag, events
    try:
        worker = start_ready_worker(env, worker_log)
        sim = subprocess.Popen(
            [
                *(sys.executable, "-m", "stream.cli", "simulate", "--via", "kafka"),
                *("--rate", str(args.rate), "--duration", str(seconds)),
                *("--campaigns", str(args.campaigns), "--seed", str(args.seed)),
            ],
            env=env,
            cwd=ROOT,
            stdout=open(sim_log, "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        print(
            f"soak: {args.rate:.0f} ev/s for {args.minutes:g} min; worker pid {worker.pid}, "
            f"logs in {tmp}",
            flush=True,
        )
        t0 = time.monotonic()
        with csv_path.open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["t_s", "rss_mib", "consumer_lag", "events_total"])
            while True:
                t = time.monotonic() - t0
                if worker.poll() is not None:
                    raise SystemExit(f"worker died at {t:.0f}s; see {worker_log}")
                try:
                    lag, events = scrape(url)
                except httpx.HTTPError as exc:
                    print(f"  scrape failed at {t:.0f}s: {exc!r}", flush=True)
                    lag, events = float("nan"), float("nan")
                row = (round(t, 1), round(rss_mib(worker.pid), 2), lag, events)
                samples.append(row)
                out.writerow(row)
                f.flush()
                if len(samples) % 12 == 1:
                    print(
                        f"  t={row[0]:6.0f}s rss={row[1]:7.1f} MiB lag={lag:8.0f} "
                        f"events={events:.0f}",
                        flush=True,
                    )
                if t >= seconds and sim.poll() is not None:
                    break
                if t >= seconds + 120:  # the simulator should have ended: do not wait forever
                    break
                time.sleep(max(0.0, args.interval - (time.monotonic() - t0 - t)))
    finally:
        for proc in (sim, worker):
            if proc is not None:
                stop_worker(proc)
        broker.stop()

    run = [s for s in samples if s[0] <= seconds]
    second_half = [(s[0], s[1]) for s in run if s[0] >= seconds / 2]
    lags = [s[2] for s in samples if s[2] == s[2]]  # drop NaN
    processed = [s[3] for s in run if s[3] == s[3]]
    summary = {
        "minutes": args.minutes,
        "rate": args.rate,
        "store": env.get("PULSE_STORE", "memory"),
        "samples": len(samples),
        "rss_start_mib": run[0][1] if run else None,
        "rss_end_mib": run[-1][1] if run else None,
        "rss_max_mib": max((s[1] for s in run), default=None),
        "rss_slope_mib_per_hour": round(slope(second_half) * 3600, 1),
        "max_lag": max(lags, default=None),
        "final_lag": lags[-1] if lags else None,
        "events_processed": processed[-1] if processed else None,
        "processed_rate": (
            round(processed[-1] / run[-1][0], 1) if processed and run[-1][0] else None
        ),
        "csv": str(csv_path),
    }
    level = statistics.fmean(r for _, r in second_half) if second_half else 0.0
    pct = abs(summary["rss_slope_mib_per_hour"]) / level * 100 if level else float("nan")
    ttl_s = Settings.from_env({"PULSE_DEDUP_TTL": args.dedup_ttl}).dedup_ttl_s
    start = summary["rss_start_mib"] or 0.0
    per_id = (level - start) * 2**20 / (args.rate * ttl_s) if level else float("nan")
    if summary["store"] == "rocksdb":
        # ids are on disk; RocksDB's memory is capped by PULSE_STORE_MEMORY whatever their
        # number, so the bound is the plateau plus the whole budget (not per-id growth)
        budget = Settings.from_env(env).store_memory / 2**20
        extrapolated = {r: round(level + budget) for r in (1000, 10_000)}
    else:
        extrapolated = {r: round(start + per_id * r * 86_400 / 2**20) for r in (1000, 10_000)}
    summary.update(
        plateau_mib=round(level, 1),
        slope_pct_per_hour=round(pct, 2),
        bytes_per_id_upper_bound=round(per_id, 1),
        **{f"extrapolated_24h_{r}_mib": mib for r, mib in extrapolated.items()},
    )
    csv_path.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    print(
        f"soak done: RSS {summary['rss_start_mib']} -> {summary['rss_end_mib']} MiB "
        f"(max {summary['rss_max_mib']}), slope {summary['rss_slope_mib_per_hour']} MiB/h "
        f"over the second half; max lag {summary['max_lag']:.0f}, final lag "
        f"{summary['final_lag']:.0f}; {summary['events_processed']:.0f} events "
        f"({summary['processed_rate']} ev/s)\nsamples: {csv_path}",
        flush=True,
    )
    on_disk = (
        " (ids on disk: plateau + PULSE_STORE_MEMORY)" if summary["store"] == "rocksdb" else ""
    )
    print(
        f"PLATEAU store={summary['store']} level={level:.0f} MiB slope={pct:.2f} %/h "
        f"(goal <= 2): {'PASS' if pct <= 2 else 'FAIL'} | state <= {per_id:.0f} B per id "
        f"(TTL {args.dedup_ttl}) | extrapolated RSS for a 24 h TTL"
        f"{on_disk}: "
        f"{summary['extrapolated_24h_1000_mib']:,} MiB at 1k ev/s, "
        f"{summary['extrapolated_24h_10000_mib']:,} MiB at 10k ev/s",
        flush=True,
    )


if __name__ == "__main__":
    main()
