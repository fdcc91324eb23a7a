"""``pulse simulate``: realistic synthetic traffic into Kafka or the HTTP collector."""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING, Any

from stream.cli.common import ensure_topics_with_retry, print_summary, settings
from stream.core.errors import ConfigError

if TYPE_CHECKING:
    from stream.core.simulator import SimConfig


def add_traffic_arguments(s: argparse.ArgumentParser, duration: float) -> None:
    """The traffic options ``pulse simulate`` and ``pulse demo`` share."""
    s.add_argument("--rate", type=float, default=200.0, help="events per second")
    s.add_argument("--duration", type=float, default=duration)
    s.add_argument("--scenario", choices=["steady", "ctr-drop", "surge"], default="steady")
    s.add_argument("--seed", type=int, default=42)
    s.add_argument(
        "--carts", type=float, default=0.3, help="share of clicks followed by an add_to_cart"
    )
    s.add_argument(
        "--catalog",
        type=int,
        default=500,
        help="products: events carry item_id and purchases items (0: none)",
    )


def traffic_config(args: argparse.Namespace, **extra: Any) -> SimConfig:
    """The simulation the shared traffic options of :func:`add_traffic_arguments` ask for."""
    from stream.core.simulator import SimConfig

    return SimConfig(
        rate=args.rate,
        duration_s=args.duration,
        scenario=args.scenario,
        seed=args.seed,
        cart_share=args.carts,
        catalog=args.catalog,
        **extra,
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("simulate", help="send realistic synthetic traffic")
    add_traffic_arguments(s, duration=60.0)
    s.add_argument("--campaigns", type=int, default=5)
    s.add_argument("--via", choices=["kafka", "http"], default="kafka")
    s.add_argument("--url", default=None, help="collector base URL for --via http")
    s.add_argument("--write-key", default=None)
    s.set_defaults(func=cmd_simulate)


def cmd_simulate(args: argparse.Namespace) -> int:
    from stream.tools.simulate import run_simulation

    found = settings()
    cfg = traffic_config(args, campaigns=args.campaigns)
    url = args.url or f"http://127.0.0.1:{found.web_port}"
    key = args.write_key or (found.write_keys[0] if found.write_keys else None)
    if args.via == "http" and not key:
        raise ConfigError("--via http needs a write key: pass --write-key or set PULSE_WRITE_KEYS")
    if args.via == "kafka":
        asyncio.run(ensure_topics_with_retry(found))
    try:
        summary = asyncio.run(run_simulation(found, cfg, via=args.via, url=url, write_key=key))
    except KeyboardInterrupt:
        return 130
    print_summary(summary)
    return 0
