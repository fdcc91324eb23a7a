"""``pulse demo``: a local broker (unless ``PULSE_KAFKA_BOOTSTRAP``), a worker and traffic."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
from pathlib import Path

from stream.cli.common import wait_for_signal
from stream.cli.simulate import add_traffic_arguments, traffic_config
from stream.config import Settings
from stream.core.errors import PulseError


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("demo", help="local broker + worker + simulated traffic in one command")
    add_traffic_arguments(s, duration=3600.0)
    s.set_defaults(func=cmd_demo)


def _set_parent_death_signal() -> None:
    from stream.tools.broker import _set_parent_death_signal as pdeath

    pdeath()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def cmd_demo(args: argparse.Namespace) -> int:
    from stream.cli.common import ensure_topics_with_retry
    from stream.tools.broker import KafkaBroker, free_port
    from stream.tools.simulate import run_simulation, write_sim_rates
    from stream.tools.workerproc import WorkerNotReady, start_worker, stop_worker, wait_ready

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
    read_key = env.get("PULSE_READ_KEYS", "").split(",")[0].strip() or (
        f"demo-read-{secrets.token_hex(8)}"
    )
    env.setdefault("PULSE_READ_KEYS", read_key)
    env.setdefault("PULSE_WINDOW", "10s")
    env.setdefault("PULSE_GRACE", "5s")
    settings = Settings.from_env(env)
    url = f"http://127.0.0.1:{settings.web_port}"

    async def rates() -> dict[str, float]:
        await ensure_topics_with_retry(settings)
        return await write_sim_rates(settings)

    fx = asyncio.run(rates())  # before the worker starts: it converts with them from the start
    shown = ", ".join(f"1 {c} = {r:g} {settings.currency}" for c, r in fx.items())
    print(f"exchange rates of the simulated currencies on pulse.fx: {shown}", flush=True)
    worker = start_worker(env, preexec_fn=_set_parent_death_signal)
    stopping = False
    try:
        try:
            wait_ready(url, worker)
        except WorkerNotReady as exc:
            raise PulseError(f"{exc}; its output is above") from None
        print(f"\nPulse is live: {url}/   (write key: {key}, read key: {read_key})", flush=True)
        print("The live page asks for the read key once per tab.", flush=True)
        print("Metrics at /metrics; send your own events with", flush=True)
        print(f"  curl -H 'Authorization: Bearer {key}' -d @event.json {url}/v1/events", flush=True)
        print("Ctrl-C stops everything.\n", flush=True)
        cfg = traffic_config(args)
        asyncio.run(run_simulation(settings, cfg, via="http", url=url, write_key=key))
        print("simulation finished; the worker keeps running until Ctrl-C", flush=True)
        wait_for_signal()
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
