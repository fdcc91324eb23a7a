"""``pulse deliver``: delivery of triggers to webhooks and vendors; ``pulse deliver replay``.

>>> from stream.cli import build_parser
>>> args = build_parser().parse_args(["deliver", "replay", "--from-dlq", "--action", "user.*"])
>>> args.deliver_command, args.from_dlq, args.action
('replay', True, 'user.*')
>>> build_parser().parse_args(["deliver"]).deliver_command is None
True
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import TYPE_CHECKING

from stream.cli.common import ensure_topics_with_retry, settings
from stream.core.errors import ConfigError

if TYPE_CHECKING:
    from stream.config import Settings
    from stream.core.delivery import DeliveryConfig
    from stream.tools.deliver import ReplaySummary


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser(
        "deliver",
        help="POST triggers to the endpoints of PULSE_DELIVERY (signed webhooks, Braze, "
        "Customer.io, Klaviyo; retried)",
    )
    d.set_defaults(func=cmd_deliver, deliver_command=None)
    inner = d.add_subparsers(dest="deliver_command")
    r = inner.add_parser("replay", help="send dead-lettered triggers again")
    r.add_argument(
        "--from-dlq",
        action="store_true",
        required=True,
        help="read pulse.triggers.dlq from its start to its end, once",
    )
    r.add_argument("--action", default=None, metavar="GLOB", help="only actions matching GLOB")
    r.set_defaults(func=cmd_replay)


def _config() -> tuple[Settings, DeliveryConfig]:
    from stream.core.delivery import load_config

    found = settings()
    return found, load_config(found.delivery, found.delivery_schedule)


def cmd_deliver(args: argparse.Namespace) -> int:
    from stream.tools.deliver import run_deliver

    found, config = _config()
    if not config.endpoints:
        raise ConfigError(f"PULSE_DELIVERY={found.delivery}: no endpoints configured")
    asyncio.run(run_deliver(found, config))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from stream.tools.deliver import replay_dlq

    found, config = _config()
    logging.getLogger("httpx").setLevel(logging.WARNING)

    async def replay() -> ReplaySummary:
        await ensure_topics_with_retry(found)
        return await replay_dlq(found, config, args.action)

    s = asyncio.run(replay())
    print(
        f"replayed {s.matched} dead-lettered triggers ({s.read} DLQ records read"
        + (f", action {args.action}" if args.action else "")
        + f"): {s.delivered} delivered, {s.failed} failed, "
        f"{s.no_endpoint} skipped (endpoint no longer configured), "
        f"{s.erased} skipped (user erased)"
    )
    for line in s.failures[:50]:
        print(f"  failed: {line}")
    return 1 if s.failed else 0
