"""``pulse report``: the KPI report (HTML, PNG charts, CSV) from Kafka or a backtest."""

from __future__ import annotations

import argparse

from stream.cli.common import settings
from stream.core.errors import PulseError


def add_parser(sub: argparse._SubParsersAction) -> None:
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


def cmd_report(args: argparse.Namespace) -> int:
    from stream.tools.report import run_report

    found = None if args.from_dir else settings()
    try:
        path = run_report(found, args.from_dir, args.out)
    except PulseError:
        raise
    except (FileNotFoundError, ValueError, ConnectionError, TimeoutError) as exc:
        raise PulseError(str(exc)) from None
    print(f"report written to {path} (kpis.csv, windows.csv and the PNG charts beside it)")
    return 0
