"""``pulse broker``: a real single-node Apache Kafka (KRaft) from the Maven Central jars."""

from __future__ import annotations

import argparse

from stream.cli.common import wait_for_signal


def add_parser(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("broker", help="run a local single-node Apache Kafka (KRaft)")
    b.add_argument("--port", type=int, default=9092)
    b.add_argument("--data-dir", default=None, help="keep data here (default: a temporary dir)")
    b.add_argument("--version", default=None, help="Kafka version (default PULSE_KAFKA_VERSION)")
    b.add_argument(
        "--sasl-user",
        action="append",
        metavar="NAME:PASSWORD",
        help="serve SASL_PLAINTEXT with SCRAM-SHA-512 for this user (repeatable); users are "
        "fixed when the data dir is first formatted",
    )
    b.set_defaults(func=cmd_broker)


def cmd_broker(args: argparse.Namespace) -> int:
    from stream.tools.broker import KafkaBroker, parse_sasl_user

    users = dict(parse_sasl_user(spec) for spec in args.sasl_user or [])
    broker = KafkaBroker(
        port=args.port, data_dir=args.data_dir, version=args.version, sasl_users=users
    )
    broker.start()
    print(
        f"Kafka {broker.version} ready on {broker.bootstrap} (data in {broker.data_dir})",
        flush=True,
    )
    if users:
        print(
            f"SASL_PLAINTEXT listener, SCRAM-SHA-512 users: {', '.join(users)}; clients need\n"
            "  PULSE_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT\n"
            "  PULSE_KAFKA_SASL_MECHANISM=SCRAM-SHA-512\n"
            "  PULSE_KAFKA_USERNAME=<user> PULSE_KAFKA_PASSWORD=<password>",
            flush=True,
        )
    print("Ctrl-C stops it.", flush=True)
    try:
        wait_for_signal()
    finally:
        broker.stop()
        print("broker stopped", flush=True)
    return 0
