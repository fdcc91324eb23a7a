"""``pulse worker``: the Faust worker and its HTTP port (``PULSE_WEB_PORT``)."""

from __future__ import annotations

import argparse
import asyncio

from stream.cli.common import ensure_topics_with_retry, settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser("worker", help="run a Pulse worker (Faust app + HTTP on PULSE_WEB_PORT)")
    w.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    import faust

    from stream.app import create_app
    from stream.kafka.lognoise import quiet_repeats
    from stream.memory import bound_allocator_retention

    bound_allocator_retention()  # RSS follows the state, not the allocator's free pages
    found = settings()
    app = create_app(found)  # reads the rules: a bad file stops here, before Kafka is needed
    asyncio.run(ensure_topics_with_retry(found))
    quiet_repeats("aiokafka")  # an outage logs each reconnect attempt; keep a few a minute
    worker = faust.Worker(app, loglevel=found.log_level.upper(), redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0
