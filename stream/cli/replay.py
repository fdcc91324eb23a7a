"""``pulse replay FILE``: a JSONL, CSV or Parquet file into ``pulse.events``."""

from __future__ import annotations

import argparse
import asyncio

from stream.cli.common import ensure_topics_with_retry, print_summary, settings
from stream.core.errors import PulseError


def add_parser(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("replay", help="replay a JSONL, CSV or Parquet file into pulse.events")
    r.add_argument("file")
    r.add_argument("--rate", type=float, default=None, help="events per second (default: max)")
    r.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    from stream.tools.replay import replay_file

    found = settings()
    asyncio.run(ensure_topics_with_retry(found))
    try:
        summary = asyncio.run(replay_file(found, args.file, rate=args.rate))
    except (FileNotFoundError, ValueError) as exc:
        raise PulseError(str(exc)) from None
    print_summary(summary)
    return 0
