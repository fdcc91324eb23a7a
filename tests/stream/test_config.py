"""Unit tests for stream.config: defaults (and the README table), overrides, errors, Kafka."""

from __future__ import annotations

import dataclasses
import re
import ssl
from pathlib import Path
from typing import Any

import pytest

from stream.config import DEFAULTS, Settings

README = Path(__file__).resolve().parents[2] / "README.md"

EXPECTED_DEFAULTS: dict[str, Any] = {
    "kafka_bootstrap": "localhost:9092",
    "kafka_security_protocol": "PLAINTEXT",
    "kafka_sasl_mechanism": "",
    "kafka_username": "",
    "kafka_password": "",
    "kafka_ssl_cafile": "",
    "app_id": "pulse",
    "web_host": "0.0.0.0",
    "web_port": 6066,
    "write_keys": (),
    "rate_limit": 20_000.0,
    "window_s": 60.0,
    "grace_s": 30.0,
    "attribution_window_s": 86_400.0,
    "dedup_ttl_s": 86_400.0,
    "topic_prefix": "pulse.",
    "partitions": 4,
    "replication_factor": 1,
    "pseudonymize_salt": "",
    "data_dir": ".pulse",
    "store": "memory",
    "rules_file": "",
    "checkpoint_s": 30.0,
    "batch_size": 4_000,
    "log_level": "info",
    "kafka_version": "3.9.1",
    "kafka_cache": "~/.cache/pulse/kafka",
    "worker_id": "",
    "store_memory": 256 * 1024 * 1024,
    "state_key": "",
    "transactions": True,
    "cors_origins": ("*",),
    "collector_ack_timeout_s": 5.0,
    "segment_mapping": "",
    "read_keys": (),
    "metrics_key": "",
    "delivery": "",
    "delivery_schedule": "",
    "deliver_port": 6067,
    "raw_retention_s": 604_800.0,
    "currency": "USD",
    "attribution_half_life_s": 604_800.0,
    "attribution_views": False,
    "offer_holdout": 0.1,
    "reco_session_gap_s": 1_800.0,
    "advertised_url": "",
}


def readme_table() -> dict[str, str]:
    """``PULSE_*`` variable -> default cell of the README's Configuration table."""
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^## Configuration\n(.*?)^## ", text, flags=re.M | re.S)
    assert match, "README.md has no '## Configuration' section"
    rows = re.findall(r"^\|\s*`(PULSE_[A-Z0-9_]+)`\s*\|([^|]*)\|", match.group(1), flags=re.M)
    assert rows, "README.md's Configuration section has no table of PULSE_ variables"
    return {name: cell.strip() for name, cell in rows}


def readme_default(cell: str) -> str:
    """``(empty...)`` means "", otherwise the value is the backquoted text."""
    if cell.startswith("(empty"):
        return ""
    return cell.strip("`")


README_TABLE = readme_table()


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert dataclasses.asdict(settings) == EXPECTED_DEFAULTS
    assert {f.name for f in dataclasses.fields(Settings)} == set(EXPECTED_DEFAULTS)


def test_from_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PULSE_WEB_PORT", "7070")
    monkeypatch.setenv("PULSE_UNRELATED", "x")
    settings = Settings.from_env()
    assert settings.web_port == 7070
    assert settings.window_s == 60.0


def test_unknown_variables_are_ignored() -> None:
    assert Settings.from_env({"PULSE_NOPE": "1", "HOME": "/"}) == Settings.from_env({})


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_every_default_is_documented_in_the_readme(name: str) -> None:
    assert name in README_TABLE, f"{name} is missing from README.md's Configuration table"
    assert readme_default(README_TABLE[name]) == DEFAULTS[name], (
        f"README.md documents {name} default as {README_TABLE[name]!r}, "
        f"stream.config.DEFAULTS has {DEFAULTS[name]!r}"
    )


@pytest.mark.parametrize("name", sorted(README_TABLE))
def test_every_readme_variable_is_in_defaults(name: str) -> None:
    assert name in DEFAULTS, f"README.md documents {name} but stream.config.DEFAULTS lacks it"


# One override per variable: (variable, value, field, expected).
OVERRIDES: list[tuple[str, str, str, Any]] = [
    ("PULSE_KAFKA_BOOTSTRAP", "k1:9092,k2:9092", "kafka_bootstrap", "k1:9092,k2:9092"),
    ("PULSE_KAFKA_SECURITY_PROTOCOL", "sasl_ssl", "kafka_security_protocol", "SASL_SSL"),
    ("PULSE_KAFKA_SASL_MECHANISM", "scram-sha-512", "kafka_sasl_mechanism", "SCRAM-SHA-512"),
    ("PULSE_KAFKA_USERNAME", "alice", "kafka_username", "alice"),
    ("PULSE_KAFKA_PASSWORD", "s3cret", "kafka_password", "s3cret"),
    (
        "PULSE_KAFKA_SSL_CAFILE",
        "/etc/ssl/kafka-ca.pem",
        "kafka_ssl_cafile",
        "/etc/ssl/kafka-ca.pem",
    ),
    ("PULSE_APP_ID", "pulse-eu", "app_id", "pulse-eu"),
    ("PULSE_WEB_HOST", "127.0.0.1", "web_host", "127.0.0.1"),
    ("PULSE_WEB_PORT", "8080", "web_port", 8080),
    ("PULSE_WRITE_KEYS", "k1", "write_keys", ("k1",)),
    ("PULSE_RATE_LIMIT", "2.5", "rate_limit", 2.5),
    ("PULSE_WINDOW", "5m", "window_s", 300.0),
    ("PULSE_GRACE", "0", "grace_s", 0.0),
    ("PULSE_ATTRIBUTION_WINDOW", "7d", "attribution_window_s", 604_800.0),
    ("PULSE_DEDUP_TTL", "90", "dedup_ttl_s", 90.0),
    ("PULSE_TOPIC_PREFIX", "acme-", "topic_prefix", "acme-"),
    ("PULSE_PARTITIONS", "12", "partitions", 12),
    ("PULSE_REPLICATION_FACTOR", "3", "replication_factor", 3),
    ("PULSE_PSEUDONYMIZE_SALT", "pepper", "pseudonymize_salt", "pepper"),
    ("PULSE_DATA_DIR", "/var/lib/pulse", "data_dir", "/var/lib/pulse"),
    ("PULSE_STORE", "rocksdb", "store", "rocksdb"),
    ("PULSE_RULES", "/etc/pulse/rules.yaml", "rules_file", "/etc/pulse/rules.yaml"),
    ("PULSE_CHECKPOINT_INTERVAL", "5m", "checkpoint_s", 300.0),
    ("PULSE_BATCH_SIZE", "250", "batch_size", 250),
    ("PULSE_LOG_LEVEL", "debug", "log_level", "debug"),
    ("PULSE_KAFKA_VERSION", "4.1.1", "kafka_version", "4.1.1"),
    ("PULSE_KAFKA_CACHE", "/opt/kafka-jars", "kafka_cache", "/opt/kafka-jars"),
    ("PULSE_WORKER_ID", " w-2 ", "worker_id", "w-2"),
    ("PULSE_STORE_MEMORY", "1GiB", "store_memory", 1 << 30),
    ("PULSE_STATE_KEY", "k3y", "state_key", "k3y"),
    ("PULSE_TRANSACTIONS", "false", "transactions", False),
    (
        "PULSE_CORS_ORIGINS",
        "https://a.example, https://b.example",
        "cors_origins",
        ("https://a.example", "https://b.example"),
    ),
    ("PULSE_COLLECTOR_ACK_TIMEOUT", "2500ms", "collector_ack_timeout_s", 2.5),
    (
        "PULSE_SEGMENT_MAPPING",
        "/etc/pulse/segment.yaml",
        "segment_mapping",
        "/etc/pulse/segment.yaml",
    ),
    ("PULSE_READ_KEYS", " r1 ,r2", "read_keys", ("r1", "r2")),
    ("PULSE_METRICS_KEY", "m1", "metrics_key", "m1"),
    ("PULSE_DELIVERY", "/etc/pulse/delivery.yaml", "delivery", "/etc/pulse/delivery.yaml"),
    ("PULSE_RAW_RETENTION", "36h", "raw_retention_s", 129_600.0),
    ("PULSE_CURRENCY", "eur", "currency", "EUR"),
    ("PULSE_ATTRIBUTION_HALF_LIFE", "2d", "attribution_half_life_s", 172_800.0),
    ("PULSE_ATTRIBUTION_TOUCHES", "Views", "attribution_views", True),
    ("PULSE_DELIVERY_SCHEDULE", "1s,5s", "delivery_schedule", "1s,5s"),
    ("PULSE_DELIVER_PORT", "7067", "deliver_port", 7067),
    ("PULSE_OFFER_HOLDOUT", "0.25", "offer_holdout", 0.25),
    ("PULSE_RECO_SESSION_GAP", "10m", "reco_session_gap_s", 600.0),
    ("PULSE_ADVERTISED_URL", " http://w1:6066 ", "advertised_url", "http://w1:6066"),
]


def test_a_key_cannot_both_write_and_read() -> None:
    with pytest.raises(ValueError, match=r"a write key .* must never read"):
        Settings.from_env({"PULSE_WRITE_KEYS": "a,b", "PULSE_READ_KEYS": "b"})


def test_overrides_cover_every_variable() -> None:
    assert sorted(name for name, *_ in OVERRIDES) == sorted(DEFAULTS)


@pytest.mark.parametrize(
    ("name", "value", "field", "expected"), OVERRIDES, ids=[o[0] for o in OVERRIDES]
)
def test_override(name: str, value: str, field: str, expected: Any) -> None:
    settings = Settings.from_env({name: value})
    assert getattr(settings, field) == expected
    # Only that field changed.
    changed = {k for k, v in dataclasses.asdict(settings).items() if v != EXPECTED_DEFAULTS[k]}
    assert changed == {field}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("20000", 20_000.0),
        ("0.5", 0.5),
        (" 100 ", 100.0),
    ],
)
def test_rate_limit_values(value: str, expected: float) -> None:
    assert Settings.from_env({"PULSE_RATE_LIMIT": value}).rate_limit == expected


INTEGER_VARS = [
    "PULSE_WEB_PORT",
    "PULSE_PARTITIONS",
    "PULSE_REPLICATION_FACTOR",
    "PULSE_BATCH_SIZE",
]


@pytest.mark.parametrize("value", ["abc", "4.5", "", "1e3", "4 partitions"])
@pytest.mark.parametrize("name", INTEGER_VARS)
def test_bad_integer_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        Settings.from_env({name: value})
    assert str(excinfo.value) == f"{name}={value!r} is not an integer; set a whole number"


DURATION_VARS = ["PULSE_WINDOW", "PULSE_GRACE", "PULSE_ATTRIBUTION_WINDOW", "PULSE_DEDUP_TTL"]


@pytest.mark.parametrize("value", ["5 minutes", "-1s", "", "1w", "soon"])
@pytest.mark.parametrize("name", DURATION_VARS)
def test_bad_duration_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        Settings.from_env({name: value})
    message = str(excinfo.value)
    assert message.startswith(f"{name}: invalid duration {value!r}: ")
    assert "ms, s, m, h or d" in message


def test_bad_attribution_touches_say_what_to_use() -> None:
    with pytest.raises(ValueError, match=r"PULSE_ATTRIBUTION_TOUCHES='impressions': use clicks"):
        Settings.from_env({"PULSE_ATTRIBUTION_TOUCHES": "impressions"})


def test_bad_rate_limit_names_the_variable() -> None:
    with pytest.raises(ValueError, match="PULSE_RATE_LIMIT"):
        Settings.from_env({"PULSE_RATE_LIMIT": "fast"})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ()),
        ("   ", ()),
        (",", ()),
        (" , ,", ()),
        ("a", ("a",)),
        ("a,b", ("a", "b")),
        ("a, b", ("a", "b")),
        (" a ,, b , ", ("a", "b")),
        ("k-1,k_2,K3", ("k-1", "k_2", "K3")),
        ("dup,dup", ("dup", "dup")),
    ],
)
def test_write_keys_parsing(value: str, expected: tuple[str, ...]) -> None:
    assert Settings.from_env({"PULSE_WRITE_KEYS": value}).write_keys == expected


@pytest.mark.parametrize(
    ("prefix", "name", "topic"),
    [
        (None, "events", "pulse.events"),
        (None, "events.dlq", "pulse.events.dlq"),
        (None, "metrics", "pulse.metrics"),
        ("acme-", "events", "acme-events"),
        ("staging.pulse.", "triggers", "staging.pulse.triggers"),
        ("", "events", "events"),
    ],
)
def test_topic_prefix(prefix: str | None, name: str, topic: str) -> None:
    env = {} if prefix is None else {"PULSE_TOPIC_PREFIX": prefix}
    assert Settings.from_env(env).topic(name) == topic


def test_with_returns_a_changed_copy() -> None:
    settings = Settings.from_env({})
    changed = settings.with_(partitions=8, topic_prefix="t.")
    assert (changed.partitions, changed.topic("events")) == (8, "t.events")
    assert (settings.partitions, settings.topic("events")) == (4, "pulse.events")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.partitions = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, {"security_protocol": "PLAINTEXT"}),
        ({"PULSE_KAFKA_SECURITY_PROTOCOL": "plaintext"}, {"security_protocol": "PLAINTEXT"}),
        (
            # credentials without a mechanism are not passed on
            {"PULSE_KAFKA_USERNAME": "alice", "PULSE_KAFKA_PASSWORD": "pw"},
            {"security_protocol": "PLAINTEXT"},
        ),
        (
            {
                "PULSE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "PULSE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                "PULSE_KAFKA_USERNAME": "alice",
                "PULSE_KAFKA_PASSWORD": "pw",
            },
            {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_plain_username": "alice",
                "sasl_plain_password": "pw",
            },
        ),
        (
            {
                "PULSE_KAFKA_SECURITY_PROTOCOL": "sasl_plaintext",
                "PULSE_KAFKA_SASL_MECHANISM": "scram-sha-512",
                "PULSE_KAFKA_USERNAME": "Alice",
                "PULSE_KAFKA_PASSWORD": "Pw",
            },
            {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_plain_username": "Alice",  # credentials keep their case
                "sasl_plain_password": "Pw",
            },
        ),
        (
            {
                "PULSE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "PULSE_KAFKA_SASL_MECHANISM": "PLAIN",
                "PULSE_KAFKA_USERNAME": "bob",
                "PULSE_KAFKA_PASSWORD": "",
            },
            {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "PLAIN",
                "sasl_plain_username": "bob",
                "sasl_plain_password": "",
            },
        ),
    ],
    ids=[
        "plaintext",
        "plaintext-lower",
        "plaintext-ignores-creds",
        "scram",
        "scram-lower",
        "plain",
    ],
)
def test_kafka_client_kwargs(env: dict[str, str], expected: dict[str, object]) -> None:
    assert Settings.from_env(env).kafka_client_kwargs() == expected


def test_kafka_client_kwargs_sasl_ssl_adds_an_ssl_context() -> None:
    settings = Settings.from_env(
        {
            "PULSE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "PULSE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "PULSE_KAFKA_USERNAME": "alice",
            "PULSE_KAFKA_PASSWORD": "pw",
        }
    )
    kw = settings.kafka_client_kwargs()
    assert isinstance(kw.pop("ssl_context"), ssl.SSLContext)
    assert kw == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alice",
        "sasl_plain_password": "pw",
    }


SCRAM = {
    "PULSE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "PULSE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "PULSE_KAFKA_USERNAME": "alice",
    "PULSE_KAFKA_PASSWORD": "pw",
}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PULSE_KAFKA_SECURITY_PROTOCOL": "TLS"}, "PULSE_KAFKA_SECURITY_PROTOCOL='TLS'"),
        (
            {"PULSE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"},
            "needs PULSE_KAFKA_SASL_MECHANISM",
        ),
        ({**SCRAM, "PULSE_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}, "SASL_PLAINTEXT or SASL_SSL"),
        ({**SCRAM, "PULSE_KAFKA_SASL_MECHANISM": "GSSAPI"}, "SCRAM-SHA-512, SCRAM-SHA-256, PLAIN"),
        ({**SCRAM, "PULSE_KAFKA_USERNAME": ""}, "needs PULSE_KAFKA_USERNAME"),
        (
            {**SCRAM, "PULSE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "PULSE_KAFKA_SSL_CAFILE": "/no"},
            "PULSE_KAFKA_SSL_CAFILE='/no' is not a readable file",
        ),
    ],
    ids=[
        "unknown-protocol",
        "sasl-without-mechanism",
        "mechanism-without-sasl",
        "gssapi",
        "no-user",
        "missing-cafile",
    ],
)
def test_clashing_security_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    settings = Settings.from_env(env)  # reading never fails: clients check before connecting
    with pytest.raises(ValueError, match=re.escape(message)):
        settings.kafka_client_kwargs()
    with pytest.raises(ValueError, match=re.escape(message)):
        settings.check_kafka_security()


def test_the_password_stays_out_of_repr() -> None:
    assert "pw" not in repr(Settings.from_env(SCRAM))


def test_ssl_uses_the_ca_file(tmp_path: Path) -> None:
    import certifi

    ca = tmp_path / "ca.pem"
    ca.write_bytes(Path(certifi.where()).read_bytes())
    settings = Settings.from_env(
        {"PULSE_KAFKA_SECURITY_PROTOCOL": "ssl", "PULSE_KAFKA_SSL_CAFILE": str(ca)}
    )
    kw = settings.kafka_client_kwargs()
    context = kw.pop("ssl_context")
    assert isinstance(context, ssl.SSLContext) and context.cert_store_stats()["x509_ca"] > 0
    assert kw == {"security_protocol": "SSL"}


def test_faust_credentials_follow_the_settings() -> None:
    import faust

    from stream.app import broker_credentials

    assert broker_credentials(Settings.from_env({})) is None
    creds = broker_credentials(Settings.from_env(SCRAM))
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.protocol.value, creds.mechanism.value) == ("SASL_PLAINTEXT", "SCRAM-SHA-512")
    assert (creds.username, creds.password, creds.ssl_context) == ("alice", "pw", None)
    sasl_ssl = broker_credentials(
        Settings.from_env({**SCRAM, "PULSE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"})
    )
    assert sasl_ssl.protocol.value == "SASL_SSL"
    assert isinstance(sasl_ssl.ssl_context, ssl.SSLContext)
    tls = broker_credentials(Settings.from_env({"PULSE_KAFKA_SECURITY_PROTOCOL": "SSL"}))
    assert isinstance(tls, faust.SSLCredentials) and tls.protocol.value == "SSL"
