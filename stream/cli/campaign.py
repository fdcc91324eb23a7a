"""``pulse campaign set|delete ID``: campaign settings on the compacted ``pulse.campaigns``."""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING, Any

from stream.cli.common import ensure_topics_with_retry, settings
from stream.core.errors import ConfigError

if TYPE_CHECKING:
    from stream.core.rules import Rules


def add_parser(sub: argparse._SubParsersAction) -> None:
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


def settings_body(args: argparse.Namespace, rules: Rules | None = None) -> dict[str, Any]:
    """The ``pulse.campaigns`` value ``pulse campaign set`` writes, from its options.

    Checked before anything is written (a ``rules`` override against ``rules``, by
    default the file ``PULSE_RULES`` names): a bad value is a :class:`ConfigError`.
    """
    import orjson

    from stream.core.campaigns import check_settings
    from stream.core.triggers import load_rules

    body: dict[str, Any] = {"campaign_id": args.id}
    if args.cost_model:
        if args.cost is None:
            raise ConfigError("--cost-model needs --cost (price per click, or per 1000 views)")
        body.update(cost_model=args.cost_model, cost=args.cost)
    if args.budget is not None:
        body["budget"] = args.budget
    if args.variants:
        body["variants"] = [v.strip() for v in args.variants.split(",") if v.strip()]
    for item in args.set or []:
        name, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r} must look like name=value")
        try:
            body[name] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body[name] = raw
    if rules is None:
        rules = load_rules(settings().rules_file or None)
    return check_settings(args.id, body, rules)


def cmd_campaign(args: argparse.Namespace) -> int:
    import orjson

    from stream.kafka.writer import EventWriter

    found = settings()
    value = None if args.action == "delete" else orjson.dumps(settings_body(args))

    async def write() -> None:
        await ensure_topics_with_retry(found)
        async with EventWriter(found) as writer:
            await writer.send_many([(args.id.encode(), value)], found.topic("campaigns"))  # type: ignore[list-item]

    asyncio.run(write())
    print(f"campaign {args.id}: {'removed' if value is None else value.decode()}")
    return 0
