"""``pulse fx set CUR RATE [--at TIME]``: an exchange rate on the compacted ``pulse.fx``.

>>> from stream.cli import build_parser
>>> args = build_parser().parse_args(["fx", "set", "EUR", "1.0841", "--at", "2026-01-01"])
>>> args.currency, args.rate, args.at
('EUR', '1.0841', '2026-01-01')
"""

from __future__ import annotations

import argparse
import asyncio
import time

from stream.cli.common import ensure_topics_with_retry, settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser("fx", help="set exchange rates into the reporting currency (pulse.fx)")
    inner = f.add_subparsers(dest="fx_command", required=True)
    s = inner.add_parser("set", help="a rate in force from --at on (default: now)")
    s.add_argument("currency", help="ISO 4217 code, e.g. EUR")
    s.add_argument("rate", help="units of PULSE_CURRENCY per unit of CURRENCY, e.g. 1.0841")
    s.add_argument(
        "--at", default=None, help="start time: ISO 8601 (2026-01-01T00:00:00Z) or epoch ms"
    )
    s.set_defaults(func=cmd_fx_set)


def cmd_fx_set(args: argparse.Namespace) -> int:
    from stream.core.fx import parse_time, record
    from stream.kafka.writer import EventWriter

    found = settings()
    valid_from = parse_time(args.at) if args.at else int(time.time() * 1000)
    key, value = record(args.currency, args.rate, valid_from)  # checked before writing

    async def write() -> None:
        await ensure_topics_with_retry(found)
        async with EventWriter(found) as writer:
            await writer.send_many([(key, value)], found.topic("fx"))

    asyncio.run(write())
    code, _, since = key.decode().partition("@")  # the key is CUR@ISO-time
    print(f"{found.topic('fx')}: 1 {code} = {float(args.rate):g} {found.currency} from {since} on")
    return 0
