"""Unit tests for stream.tools.broker's configuration (no JVM): SASL listener, users, client env."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.cli import build_parser
from stream.config import Settings
from stream.tools.broker import BrokerError, KafkaBroker, parse_sasl_user


def broker(tmp_path: Path, **kwargs: object) -> KafkaBroker:
    return KafkaBroker(port=19092, controller_port=19093, data_dir=tmp_path, **kwargs)  # type: ignore[arg-type]


def test_plaintext_by_default(tmp_path: Path) -> None:
    b = broker(tmp_path)
    cfg = b.config()
    assert cfg["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert "sasl.enabled.mechanisms" not in cfg
    assert b.security_protocol == "PLAINTEXT"
    assert b.client_env() == {"PULSE_KAFKA_BOOTSTRAP": "127.0.0.1:19092"}
    assert b.client_security() == {}


def test_sasl_users_make_a_scram_listener(tmp_path: Path) -> None:
    b = broker(tmp_path, sasl_users={"alice": "a-secret", "bob": "b-secret"})
    cfg = b.config()
    assert cfg["listeners"] == "SASL_PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert cfg["advertised.listeners"] == "SASL_PLAINTEXT://127.0.0.1:19092"
    assert cfg["listener.security.protocol.map"] == (
        "CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT"
    )
    assert cfg["inter.broker.listener.name"] == "SASL_PLAINTEXT"
    assert cfg["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert cfg["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    jaas = cfg["listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config"]
    assert 'username="alice" password="a-secret";' in jaas  # the broker logs in as the first user
    assert b.security_protocol == "SASL_PLAINTEXT"


def test_client_env_is_what_a_pulse_process_needs(tmp_path: Path) -> None:
    b = broker(tmp_path, sasl_users={"alice": "a-secret", "bob": "b-secret"})
    env = b.client_env("bob")
    assert env == {
        "PULSE_KAFKA_BOOTSTRAP": "127.0.0.1:19092",
        "PULSE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "PULSE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "PULSE_KAFKA_USERNAME": "bob",
        "PULSE_KAFKA_PASSWORD": "b-secret",
    }
    kw = Settings.from_env(env).kafka_client_kwargs()
    assert kw["sasl_plain_username"] == "bob"
    assert b.client_security()["sasl_plain_username"] == "alice"


def test_server_properties_are_private(tmp_path: Path) -> None:
    b = broker(tmp_path, sasl_users={"alice": "a-secret"})
    props, _ = b._prepare(tmp_path)
    assert props.stat().st_mode & 0o077 == 0
    assert "a-secret" in props.read_text()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("alice:alice-secret", ("alice", "alice-secret")), ("bob:a:b", ("bob", "a:b"))],
)
def test_parse_sasl_user(spec: str, expected: tuple[str, str]) -> None:
    assert parse_sasl_user(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("alice", "NAME:PASSWORD"),
        ("alice:", "password for 'alice' must be non-empty"),
        (":pw", "user name '' must be non-empty"),
        ("alice:pass word", "without spaces"),
        ("alice:a,b", "commas"),
        ("al=ice:pw", "user name 'al=ice'"),
        ('alice:"pw"', "quotes"),
    ],
)
def test_bad_sasl_users_are_refused_with_a_reason(spec: str, message: str) -> None:
    with pytest.raises(BrokerError, match=message):
        parse_sasl_user(spec)


def test_bad_password_is_not_echoed(tmp_path: Path) -> None:
    with pytest.raises(BrokerError) as err:
        broker(tmp_path, sasl_users={"alice": "sec ret"})
    assert "sec ret" not in str(err.value)


def test_broker_cli_takes_repeated_sasl_users() -> None:
    args = build_parser().parse_args(
        ["broker", "--sasl-user", "alice:a-secret", "--sasl-user", "bob:b-secret"]
    )
    assert args.sasl_user == ["alice:a-secret", "bob:b-secret"]
    assert build_parser().parse_args(["broker"]).sasl_user is None
