"""The ``pulse`` command line.

pulse broker [--port 9092] [--data-dir DIR] [--sasl-user NAME:PASSWORD ...]
pulse worker
pulse demo
pulse simulate [--rate 200] [--duration 60] [--scenario steady] [--via kafka|http]
pulse replay FILE
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from stream.config import Settings

log = logging.getLogger("pulse")


def _settings() -> Settings:
    try:
        settings = Settings.from_env()
        settings.check_kafka_security()
    except ValueError as exc:
        sys.exit(f"pulse: configuration error: {exc}")
    return settings


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        stop.wait(0.5)


def cmd_broker(args: argparse.Namespace) -> int:
    from stream.broker import BrokerError, KafkaBroker, parse_sasl_user

    try:
        users = dict(parse_sasl_user(spec) for spec in args.sasl_user or [])
        broker = KafkaBroker(
            port=args.port, data_dir=args.data_dir, version=args.version, sasl_users=users
        )
        broker.start()
    except BrokerError as exc:
        print(f"pulse broker: {exc}", file=sys.stderr)
        return 1
    print(
        f"Kafka {broker.version} ready on {broker.bootstrap} (data in {broker.data_dir})",
        flush=True,
    )
    if users:
        print(
            f"SASL_PLAINTEXT listener, SCRAM-SHA-512 users: {', '.join(users)}; clients need\n"
            "  PULSE_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT\n"
            "  PULSE_KAFKA_SASL_MECHANISM=SCRAM-SHA-512\n"
            "  PULSE_KAFKA_USERNAME=<user> PULSE_KAFKA_PASSWORD=<password>",
            flush=True,
        )
    print("Ctrl-C stops it.", flush=True)
    try:
        _wait_for_signal()
    finally:
        broker.stop()
        print("broker stopped", flush=True)
    return 0


async def _ensure_topics_with_retry(settings: Settings, timeout_s: float = 60.0) -> None:
    """Create the topics, retrying while Kafka is unreachable; exit at once on a refused login."""
    from stream.topics import KafkaSecurityError, ensure_topics

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await ensure_topics(settings)
            return
        except KafkaSecurityError as exc:
            raise SystemExit(f"pulse: {exc}") from None
        except ValueError as exc:
            raise SystemExit(f"pulse: configuration error: {exc}") from None
        except Exception as exc:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"pulse: cannot reach Kafka at {settings.kafka_bootstrap} ({exc!r}); "
                    "start one with `pulse broker` or set PULSE_KAFKA_BOOTSTRAP"
                ) from None
            await asyncio.sleep(1.0)


def cmd_worker(args: argparse.Namespace) -> int:
    import faust

    from stream.app import create_app
    from stream.logfilter import quiet_repeats

    settings = _settings()
    asyncio.run(_ensure_topics_with_retry(settings))
    app = create_app(settings)
    quiet_repeats("aiokafka")  # an outage logs each reconnect attempt; keep a few a minute
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0


def _set_parent_death_signal() -> None:
    from stream.broker import _set_parent_death_signal as pdeath

    pdeath()


def cmd_demo(args: argparse.Namespace) -> int:
    from stream.broker import KafkaBroker, free_port
    from stream.core.simulator import SimConfig
    from stream.simulate import run_simulation
    from stream.workerproc import WorkerNotReady, start_worker, stop_worker, wait_ready

    env = dict(os.environ)
    broker = None
    data = Path(env.get("PULSE_DATA_DIR", ".pulse"))
    if "PULSE_KAFKA_BOOTSTRAP" not in env:
        port = 9092 if _port_free(9092) else free_port()
        broker = KafkaBroker(port=port, data_dir=data / "kafka")
        print(f"starting Kafka {broker.version} on {broker.bootstrap} ...", flush=True)
        broker.start()
        env["PULSE_KAFKA_BOOTSTRAP"] = broker.bootstrap
    key = env.get("PULSE_WRITE_KEYS", "").split(",")[0].strip() or f"demo-{secrets.token_hex(8)}"
    env.setdefault("PULSE_WRITE_KEYS", key)
    env.setdefault("PULSE_WINDOW", "10s")
    env.setdefault("PULSE_GRACE", "5s")
    settings = Settings.from_env(env)
    url = f"http://127.0.0.1:{settings.web_port}"
    worker = start_worker(env, preexec_fn=_set_parent_death_signal)
    stopping = False
    try:
        try:
            wait_ready(url, worker)
        except WorkerNotReady as exc:
            raise SystemExit(f"pulse: {exc}; its output is above") from None
        print(f"\nPulse is live: {url}/   (write key: {key})", flush=True)
        print("Metrics at /metrics; send your own events with", flush=True)
        print(f"  curl -H 'Authorization: Bearer {key}' -d @event.json {url}/v1/events", flush=True)
        print("Ctrl-C stops everything.\n", flush=True)
        cfg = SimConfig(
            rate=args.rate, duration_s=args.duration, scenario=args.scenario, seed=args.seed
        )
        asyncio.run(run_simulation(settings, cfg, via="http", url=url, write_key=key))
        print("simulation finished; the worker keeps running until Ctrl-C", flush=True)
        _wait_for_signal()
    except KeyboardInterrupt:
        stopping = True
    finally:
        print("\nstopping worker ...", flush=True)
        stop_worker(worker)
        if broker is not None:
            print("stopping broker ...", flush=True)
            broker.stop()
        print("stopped" + (" (interrupted)" if stopping else ""), flush=True)
    return 0


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def cmd_simulate(args: argparse.Namespace) -> int:
    from stream.core.simulator import SimConfig
    from stream.simulate import run_simulation

    settings = _settings()
    cfg = SimConfig(
        rate=args.rate,
        duration_s=args.duration,
        campaigns=args.campaigns,
        scenario=args.scenario,
        seed=args.seed,
    )
    url = args.url or f"http://127.0.0.1:{settings.web_port}"
    key = args.write_key or (settings.write_keys[0] if settings.write_keys else None)
    if args.via == "http" and not key:
        sys.exit(
            "pulse simulate: --via http needs a write key: pass --write-key or set PULSE_WRITE_KEYS"
        )
    if args.via == "kafka":
        asyncio.run(_ensure_topics_with_retry(settings))
    try:
        summary = asyncio.run(run_simulation(settings, cfg, via=args.via, url=url, write_key=key))
    except KeyboardInterrupt:
        return 130
    _print_summary(summary)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from stream.replay import replay_file

    settings = _settings()
    asyncio.run(_ensure_topics_with_retry(settings))
    try:
        summary = asyncio.run(replay_file(settings, args.file, rate=args.rate))
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f"pulse replay: {exc}")
    _print_summary(summary)
    return 0


def cmd_campaign(args: argparse.Namespace) -> int:
    import orjson

    from stream.producer import EventWriter

    settings = _settings()
    value: bytes | None
    if args.action == "delete":
        value = None
    else:
        body: dict[str, Any] = {"campaign_id": args.id}
        if args.cost_model:
            if args.cost is None:
                sys.exit(
                    "pulse campaign set: --cost-model needs --cost "
                    "(price per click, or per 1000 views)"
                )
            body.update(cost_model=args.cost_model, cost=args.cost)
        if args.budget is not None:
            body["budget"] = args.budget
        if args.variants:
            body["variants"] = [v.strip() for v in args.variants.split(",") if v.strip()]
        for item in args.set or []:
            name, sep, raw = item.partition("=")
            if not sep:
                sys.exit(f"pulse campaign set: --set {item!r} must look like name=value")
            try:
                body[name] = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body[name] = raw
        value = orjson.dumps(body)

    async def write() -> None:
        await _ensure_topics_with_retry(settings)
        async with EventWriter(settings) as writer:
            await writer.send_many([(args.id.encode(), value)], settings.topic("campaigns"))  # type: ignore[list-item]

    asyncio.run(write())
    print(f"campaign {args.id}: {'removed' if value is None else value.decode()}")
    return 0


def cmd_erase(args: argparse.Namespace) -> int:
    from stream.erase import EraseError, describe, request_erasure

    settings = _settings()

    async def run() -> Any:
        await _ensure_topics_with_retry(settings)
        return await request_erasure(settings, args.user, wait_s=args.wait)

    try:
        receipt = asyncio.run(run())
    except EraseError as exc:
        sys.exit(f"pulse erase: {exc}")
    code, message = describe(args.user, receipt, args.wait)
    print(message, file=sys.stderr if code else sys.stdout)
    return code


def cmd_backtest(args: argparse.Namespace) -> int:
    import orjson

    from stream.backtest import run_backtest

    campaigns = None
    if args.campaigns:
        lines = Path(args.campaigns).read_bytes().splitlines()
        campaigns = {c["campaign_id"]: c for c in map(orjson.loads, filter(None, lines))}
    try:
        summary = run_backtest(_settings(), args.file, args.out, campaigns)
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f"pulse backtest: {exc}")
    _print_summary(summary)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from stream.report import run_report

    settings = None if args.from_dir else _settings()
    try:
        path = run_report(settings, args.from_dir, args.out)
    except (FileNotFoundError, ValueError, ConnectionError, TimeoutError) as exc:
        sys.exit(f"pulse report: {exc}")
    print(f"report written to {path} (kpis.csv, windows.csv and the PNG charts beside it)")
    return 0


def _print_summary(summary: dict[str, Any]) -> None:
    import orjson

    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pulse", description="Real-time marketing event processor")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("broker", help="run a local single-node Apache Kafka (KRaft)")
    b.add_argument("--port", type=int, default=9092)
    b.add_argument("--data-dir", default=None, help="keep data here (default: a temporary dir)")
    b.add_argument("--version", default=None, help="Kafka version (default PULSE_KAFKA_VERSION)")
    b.add_argument(
        "--sasl-user",
        action="append",
        metavar="NAME:PASSWORD",
        help="serve SASL_PLAINTEXT with SCRAM-SHA-512 for this user (repeatable); users are "
        "fixed when the data dir is first formatted",
    )
    b.set_defaults(func=cmd_broker)

    w = sub.add_parser("worker", help="run a Pulse worker (Faust app + HTTP on PULSE_WEB_PORT)")
    w.set_defaults(func=cmd_worker)

    for name, helptext in (
        ("demo", "local broker + worker + simulated traffic in one command"),
        ("simulate", "send realistic synthetic traffic"),
    ):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--rate", type=float, default=200.0, help="events per second")
        s.add_argument("--duration", type=float, default=3600.0 if name == "demo" else 60.0)
        s.add_argument("--scenario", choices=["steady", "ctr-drop", "surge"], default="steady")
        s.add_argument("--seed", type=int, default=42)
        if name == "simulate":
            s.add_argument("--campaigns", type=int, default=5)
            s.add_argument("--via", choices=["kafka", "http"], default="kafka")
            s.add_argument("--url", default=None, help="collector base URL for --via http")
            s.add_argument("--write-key", default=None)
            s.set_defaults(func=cmd_simulate)
        else:
            s.set_defaults(func=cmd_demo)

    c = sub.add_parser("campaign", help="set or delete campaign settings in pulse.campaigns")
    c.add_argument("action", choices=["set", "delete"])
    c.add_argument("id", help="campaign_id")
    c.add_argument("--cost-model", choices=["cpc", "cpm"], default=None)
    c.add_argument(
        "--cost", type=float, default=None, help="price per click (cpc) or per 1000 views (cpm)"
    )
    c.add_argument("--budget", type=float, default=None)
    c.add_argument("--variants", default=None, help="comma-separated variant ids")
    c.add_argument("--set", action="append", help="extra setting name=value (JSON values allowed)")
    c.set_defaults(func=cmd_campaign)

    r = sub.add_parser("replay", help="replay a JSONL, CSV or Parquet file into pulse.events")
    r.add_argument("file")
    r.add_argument("--rate", type=float, default=None, help="events per second (default: max)")
    r.set_defaults(func=cmd_replay)

    e = sub.add_parser("erase", help="forget a user: last click, model features, segment")
    e.add_argument("--user", required=True, help="the user_id or anonymous_id (not pseudonymised)")
    e.add_argument(
        "--wait", type=float, default=60.0, help="seconds to wait for a worker (0: do not wait)"
    )
    e.set_defaults(func=cmd_erase)

    bt = sub.add_parser("backtest", help="run the windows and trigger rules offline over a file")
    bt.add_argument("file", help=".jsonl/.ndjson, .csv or .parquet")
    bt.add_argument("--out", required=True, help="output directory")
    bt.add_argument("--campaigns", default=None, help="JSONL of campaign settings (cost models)")
    bt.set_defaults(func=cmd_backtest)

    k = sub.add_parser("report", help="KPI report (HTML, PNG charts, CSV) from pulse.metrics")
    k.add_argument(
        "--from",
        dest="from_dir",
        metavar="DIR",
        default=None,
        help="read a `pulse backtest --out` directory instead of Kafka",
    )
    k.add_argument(
        "--out", metavar="DIR", default="report", help="output directory (default: report/)"
    )
    k.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = os.environ.get("PULSE_LOG_LEVEL", "info").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
