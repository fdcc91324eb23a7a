"""``python -m bench.windowed_counts [--quick] ...``: runs every part, prints the summary."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import tempfile
import time
import traceback
from pathlib import Path

from bench import windowed_counts
from bench.common import RESULTS, ROOT, log
from bench.windowed_counts.check import compare
from bench.windowed_counts.live import live_latency
from bench.windowed_counts.produce import create_topic, prefill
from bench.windowed_counts.pulse import pulse_drain, pulse_env, pulse_start
from bench.windowed_counts.quix import QUIX_RUNS, quix_run
from bench.windowed_counts.raw import raw_drain
from bench.windowed_counts.summary import Results, attempt, exact, fmt_rate, summary
from bench.windowed_counts.workload import PARTITIONS, prefill_workload
from stream.config import Settings
from stream.kafka.topics import ensure_topics
from stream.tools.broker import KafkaBroker, free_port
from stream.tools.workerproc import stop_worker

STAMP = time.strftime("%Y%m%d-%H%M%S")


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


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m bench.windowed_counts",
        description=(windowed_counts.__doc__ or "").split("\n")[0],
    )
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
