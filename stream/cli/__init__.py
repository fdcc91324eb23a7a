"""The ``pulse`` command line: one module per command, each with its parser and ``run``.

>>> build_parser().parse_args(["campaign", "delete", "c1"]).action
'delete'
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from stream.cli import (
    backtest,
    broker,
    campaign,
    deliver,
    demo,
    erase,
    fx,
    replay,
    report,
    simulate,
    worker,
)
from stream.core.errors import PulseError

COMMANDS = (
    broker,
    worker,
    demo,
    simulate,
    campaign,
    fx,
    replay,
    erase,
    backtest,
    report,
    deliver,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pulse", description="Real-time marketing event processor")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; a :class:`PulseError` is printed as ``pulse CMD: message``."""
    args = build_parser().parse_args(argv)
    level = os.environ.get("PULSE_LOG_LEVEL", "info").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except PulseError as exc:
        print(f"pulse {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
