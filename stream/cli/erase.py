"""``pulse erase --user ID``: forget a user and wait for the worker's acknowledgement."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from stream.cli.common import ensure_topics_with_retry, settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("erase", help="forget a user: last click, model features, segment")
    e.add_argument("--user", required=True, help="the user_id or anonymous_id (not pseudonymised)")
    e.add_argument(
        "--wait", type=float, default=60.0, help="seconds to wait for a worker (0: do not wait)"
    )
    e.set_defaults(func=cmd_erase)


def cmd_erase(args: argparse.Namespace) -> int:
    """Erase the user and every id linked with it (``pulse.identities``), one request each."""
    from stream.tools.erase import describe, linked_users, request_erasure

    found = settings()

    async def request() -> list[tuple[str, Any]]:
        await ensure_topics_with_retry(found)
        users = await linked_users(found, args.user)
        if len(users) > 1:
            print(f"{args.user!r} is linked with {', '.join(map(repr, users[1:]))}: erasing all")
        return [(u, await request_erasure(found, u, wait_s=args.wait)) for u in users]

    worst = 0
    for user, receipt in asyncio.run(request()):
        code, message = describe(user, receipt, args.wait)
        print(message, file=sys.stderr if code else sys.stdout)
        worst = max(worst, code)
    return worst
