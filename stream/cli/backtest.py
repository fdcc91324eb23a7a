"""``pulse backtest FILE --out DIR``: the live windows and rules, offline (no Kafka)."""

from __future__ import annotations

import argparse
from pathlib import Path

from stream.cli.common import print_summary, settings
from stream.core.errors import PulseError


def add_parser(sub: argparse._SubParsersAction) -> None:
    bt = sub.add_parser("backtest", help="run the windows and trigger rules offline over a file")
    bt.add_argument("file", help=".jsonl/.ndjson, .csv or .parquet")
    bt.add_argument("--out", required=True, help="output directory")
    bt.add_argument("--campaigns", default=None, help="JSONL of campaign settings (cost models)")
    bt.add_argument(
        "--fx", default=None, help="CSV of exchange rates: currency,rate,valid_from (see README)"
    )
    bt.set_defaults(func=cmd_backtest)


def cmd_backtest(args: argparse.Namespace) -> int:
    import orjson

    from stream.core.fx import read_csv
    from stream.tools.backtest import run_backtest

    campaigns = None
    if args.campaigns:
        lines = Path(args.campaigns).read_bytes().splitlines()
        campaigns = {c["campaign_id"]: c for c in map(orjson.loads, filter(None, lines))}
    found = settings()
    try:
        fx = read_csv(args.fx, found.currency) if args.fx else None
        summary = run_backtest(found, args.file, args.out, campaigns, fx=fx)
    except PulseError:
        raise
    except (FileNotFoundError, ValueError) as exc:
        raise PulseError(str(exc)) from None
    print_summary(summary)
    return 0
