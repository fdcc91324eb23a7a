"""One frozen settings object, read from ``PULSE_*`` environment variables.

>>> s = Settings.from_env({"PULSE_WINDOW": "5m", "PULSE_WRITE_KEYS": "a, b"})
>>> s.window_s, s.write_keys
(300.0, ('a', 'b'))
>>> s.topic("events")
'pulse.events'
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from stream.core.durations import parse_duration
from stream.core.fx import FxError, FxRates, currency_code
from stream.core.pipeline import PipelineConfig
from stream.core.sealing import StateKey

_UNITS = {
    "": 1,
    "b": 1,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
}


def parse_size(text: str) -> int:
    """Bytes of a size such as ``256MiB``, ``1.5GiB``, ``500MB`` or ``1048576``.

    >>> parse_size("256MiB"), parse_size("1.5 GiB"), parse_size("4096")
    (268435456, 1610612736, 4096)
    """
    raw = text.strip().lower().replace(" ", "")
    number = raw.rstrip("kmgib")
    unit = raw[len(number) :]
    try:
        if unit not in _UNITS:
            raise ValueError
        return int(float(number) * _UNITS[unit])
    except ValueError:
        raise ValueError(
            f"{text!r} is not a size: write a number of bytes with a unit, e.g. 256MiB or 2GiB"
        ) from None


#: Values accepted by PULSE_KAFKA_SECURITY_PROTOCOL and PULSE_KAFKA_SASL_MECHANISM.
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")

#: Every environment variable Pulse reads, with its default (documented in the README).
DEFAULTS: dict[str, str] = {
    "PULSE_KAFKA_BOOTSTRAP": "localhost:9092",
    "PULSE_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
    "PULSE_KAFKA_SASL_MECHANISM": "",
    "PULSE_KAFKA_USERNAME": "",
    "PULSE_KAFKA_PASSWORD": "",
    "PULSE_KAFKA_SSL_CAFILE": "",
    "PULSE_APP_ID": "pulse",
    "PULSE_WEB_HOST": "0.0.0.0",
    "PULSE_WEB_PORT": "6066",
    "PULSE_WRITE_KEYS": "",
    "PULSE_RATE_LIMIT": "20000",
    "PULSE_CORS_ORIGINS": "*",
    "PULSE_COLLECTOR_ACK_TIMEOUT": "5s",
    "PULSE_SEGMENT_MAPPING": "",
    "PULSE_READ_KEYS": "",
    "PULSE_METRICS_KEY": "",
    "PULSE_WINDOW": "60s",
    "PULSE_GRACE": "30s",
    "PULSE_ATTRIBUTION_WINDOW": "24h",
    "PULSE_DEDUP_TTL": "24h",
    "PULSE_TOPIC_PREFIX": "pulse.",
    "PULSE_PARTITIONS": "4",
    "PULSE_REPLICATION_FACTOR": "1",
    "PULSE_PSEUDONYMIZE_SALT": "",
    "PULSE_DATA_DIR": ".pulse",
    "PULSE_STORE": "memory",
    "PULSE_STORE_MEMORY": "256MiB",
    "PULSE_STATE_KEY": "",
    "PULSE_RULES": "",
    "PULSE_CHECKPOINT_INTERVAL": "30s",
    "PULSE_BATCH_SIZE": "4000",
    "PULSE_LOG_LEVEL": "info",
    "PULSE_KAFKA_VERSION": "3.9.1",
    "PULSE_KAFKA_CACHE": "~/.cache/pulse/kafka",
    "PULSE_WORKER_ID": "",
    "PULSE_TRANSACTIONS": "true",
    "PULSE_DELIVERY": "",
    "PULSE_DELIVERY_SCHEDULE": "",
    "PULSE_DELIVER_PORT": "6067",
    "PULSE_RAW_RETENTION": "7d",
    "PULSE_CURRENCY": "USD",
    "PULSE_ATTRIBUTION_HALF_LIFE": "7d",
    "PULSE_ATTRIBUTION_TOUCHES": "clicks",
    "PULSE_OFFER_HOLDOUT": "0.1",
    "PULSE_RECO_SESSION_GAP": "30m",
    "PULSE_ADVERTISED_URL": "",
}


def reporting_currency(value: str) -> str:
    """``PULSE_CURRENCY`` checked: an ISO 4217 code.

    >>> reporting_currency("eur")
    'EUR'
    """
    try:
        return currency_code(value)
    except FxError as exc:
        raise ValueError(f"PULSE_CURRENCY: {exc}") from None


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str
    kafka_security_protocol: str
    kafka_sasl_mechanism: str
    kafka_username: str
    kafka_password: str = field(repr=False)  # never in logs or tracebacks
    kafka_ssl_cafile: str
    app_id: str
    web_host: str
    web_port: int
    write_keys: tuple[str, ...]
    rate_limit: float
    window_s: float
    grace_s: float
    attribution_window_s: float
    dedup_ttl_s: float
    topic_prefix: str
    partitions: int
    replication_factor: int
    pseudonymize_salt: str
    data_dir: str
    store: str
    rules_file: str
    checkpoint_s: float
    batch_size: int
    log_level: str
    kafka_version: str
    kafka_cache: str
    worker_id: str = ""
    store_memory: int = 256 * 1024 * 1024  # PULSE_STORE_MEMORY: RocksDB's budget, bytes
    state_key: str = field(default="", repr=False)  # PULSE_STATE_KEY: seals state records
    #: PULSE_TRANSACTIONS: a batch's writes and offsets in one Kafka transaction
    transactions: bool = True
    #: PULSE_CORS_ORIGINS: origins whose pages may call the collector (``*``: any)
    cors_origins: tuple[str, ...] = ("*",)
    #: PULSE_COLLECTOR_ACK_TIMEOUT: the collector answers 503 when Kafka has not
    #: acknowledged a request's events within this many seconds
    collector_ack_timeout_s: float = 5.0
    #: PULSE_SEGMENT_MAPPING: a YAML file merged over the packaged Segment mapping
    segment_mapping: str = ""
    #: PULSE_READ_KEYS: keys of the read side (none: it answers on loopback only)
    read_keys: tuple[str, ...] = field(default=(), repr=False)
    #: PULSE_METRICS_KEY: the bearer key GET /metrics asks for (empty: open)
    metrics_key: str = field(default="", repr=False)
    #: PULSE_DELIVERY: the webhook endpoints YAML of `pulse deliver`
    delivery: str = ""
    #: PULSE_DELIVERY_SCHEDULE: retry waits overriding the YAML's (e.g. ``5s,5m,30m``)
    delivery_schedule: str = ""
    #: PULSE_DELIVER_PORT: `pulse deliver`'s /metrics, /healthz and /readyz
    deliver_port: int = 6067
    #: PULSE_RAW_RETENTION: retention of the topics that hold raw user ids (RAW_ID_TOPICS)
    raw_retention_s: float = 604_800.0
    #: PULSE_CURRENCY: the reporting currency of revenue, spend and ROAS (ISO 4217)
    currency: str = "USD"
    #: PULSE_ATTRIBUTION_HALF_LIFE: half-life of the time-decay attribution model
    attribution_half_life_s: float = 604_800.0
    #: PULSE_ATTRIBUTION_TOUCHES: ``clicks`` (default) or ``views`` (views and clicks)
    #: are the touches attribution credits
    attribution_views: bool = False
    #: PULSE_OFFER_HOLDOUT: share of users eligible for an offer who get none (by hash)
    offer_holdout: float = 0.1
    #: PULSE_RECO_SESSION_GAP: a gap this long ends a user's session (recommendations)
    reco_session_gap_s: float = 1_800.0
    #: PULSE_ADVERTISED_URL: where other workers reach this one ("": http://<host name>:port)
    advertised_url: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (default: ``os.environ``) over :data:`DEFAULTS`."""
        src = os.environ if env is None else env
        v = {k: src.get(k, d) for k, d in DEFAULTS.items()}

        def integer(name: str) -> int:
            try:
                return int(v[name])
            except ValueError:
                raise ValueError(
                    f"{name}={v[name]!r} is not an integer; set a whole number"
                ) from None

        def number(name: str) -> float:
            try:
                return float(v[name])
            except ValueError:
                raise ValueError(f"{name}={v[name]!r} is not a number; set e.g. 5000") from None

        def duration(name: str) -> float:
            try:
                return parse_duration(v[name])
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None

        def store(value: str) -> str:
            if value not in ("memory", "rocksdb"):
                raise ValueError(
                    f"PULSE_STORE={value!r}: use memory (default) or rocksdb (needs rocksdict)"
                )
            return value

        def boolean(name: str) -> bool:
            value = v[name].strip().lower()
            if value not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"{name}={v[name]!r}: use true or false")
            return value in ("true", "1", "yes")

        def size(name: str) -> int:
            try:
                return parse_size(v[name])
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None

        def touches(value: str) -> bool:
            if value.strip().lower() not in ("clicks", "views"):
                raise ValueError(
                    f"PULSE_ATTRIBUTION_TOUCHES={value!r}: use clicks (default: a purchase is "
                    "credited to clicks) or views (views count as touches too)"
                )
            return value.strip().lower() == "views"

        def share(name: str) -> float:
            value = number(name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}={v[name]!r}: use a share from 0 to below 1, e.g. 0.1")
            return value

        def listed(name: str) -> tuple[str, ...]:
            return tuple(item.strip() for item in v[name].split(",") if item.strip())

        write_keys, read_keys = listed("PULSE_WRITE_KEYS"), listed("PULSE_READ_KEYS")
        if set(write_keys) & set(read_keys):
            raise ValueError(
                "PULSE_READ_KEYS and PULSE_WRITE_KEYS share a key: a write key (public in "
                "web pages) must never read; use different keys"
            )
        return cls(
            kafka_bootstrap=v["PULSE_KAFKA_BOOTSTRAP"],
            kafka_security_protocol=v["PULSE_KAFKA_SECURITY_PROTOCOL"].upper(),
            kafka_sasl_mechanism=v["PULSE_KAFKA_SASL_MECHANISM"].upper(),
            kafka_username=v["PULSE_KAFKA_USERNAME"],
            kafka_password=v["PULSE_KAFKA_PASSWORD"],
            kafka_ssl_cafile=v["PULSE_KAFKA_SSL_CAFILE"],
            app_id=v["PULSE_APP_ID"],
            web_host=v["PULSE_WEB_HOST"],
            web_port=integer("PULSE_WEB_PORT"),
            write_keys=write_keys,
            rate_limit=number("PULSE_RATE_LIMIT"),
            window_s=duration("PULSE_WINDOW"),
            grace_s=duration("PULSE_GRACE"),
            attribution_window_s=duration("PULSE_ATTRIBUTION_WINDOW"),
            dedup_ttl_s=duration("PULSE_DEDUP_TTL"),
            topic_prefix=v["PULSE_TOPIC_PREFIX"],
            partitions=integer("PULSE_PARTITIONS"),
            replication_factor=integer("PULSE_REPLICATION_FACTOR"),
            pseudonymize_salt=v["PULSE_PSEUDONYMIZE_SALT"],
            data_dir=v["PULSE_DATA_DIR"],
            store=store(v["PULSE_STORE"]),
            rules_file=v["PULSE_RULES"],
            checkpoint_s=duration("PULSE_CHECKPOINT_INTERVAL"),
            batch_size=integer("PULSE_BATCH_SIZE"),
            log_level=v["PULSE_LOG_LEVEL"],
            kafka_version=v["PULSE_KAFKA_VERSION"],
            kafka_cache=v["PULSE_KAFKA_CACHE"],
            worker_id=v["PULSE_WORKER_ID"].strip(),
            store_memory=size("PULSE_STORE_MEMORY"),
            state_key=v["PULSE_STATE_KEY"],
            transactions=boolean("PULSE_TRANSACTIONS"),
            cors_origins=listed("PULSE_CORS_ORIGINS"),
            collector_ack_timeout_s=duration("PULSE_COLLECTOR_ACK_TIMEOUT"),
            segment_mapping=v["PULSE_SEGMENT_MAPPING"],
            read_keys=read_keys,
            metrics_key=v["PULSE_METRICS_KEY"].strip(),
            delivery=v["PULSE_DELIVERY"],
            delivery_schedule=v["PULSE_DELIVERY_SCHEDULE"],
            deliver_port=integer("PULSE_DELIVER_PORT"),
            raw_retention_s=duration("PULSE_RAW_RETENTION"),
            currency=reporting_currency(v["PULSE_CURRENCY"]),
            attribution_half_life_s=duration("PULSE_ATTRIBUTION_HALF_LIFE"),
            attribution_views=touches(v["PULSE_ATTRIBUTION_TOUCHES"]),
            offer_holdout=share("PULSE_OFFER_HOLDOUT"),
            reco_session_gap_s=duration("PULSE_RECO_SESSION_GAP"),
            advertised_url=v["PULSE_ADVERTISED_URL"].strip(),
        )

    def group_instance_id(self) -> str:
        """This worker's static group member id (KIP-345), so a restarted worker takes its
        partitions back at once: ``PULSE_WORKER_ID`` (else one derived from the host name
        and the absolute data dir) and the web port. Faust puts the worker's URL in its
        partition assignment, and a static member gets its old assignment back: the port
        is part of the id so that a worker on a new port joins as a new member.

        >>> Settings.from_env({"PULSE_WORKER_ID": "w1"}).group_instance_id()
        'pulse-w1-6066'
        >>> a = Settings.from_env({"PULSE_DATA_DIR": "/srv/a"}).group_instance_id()
        >>> b = Settings.from_env({"PULSE_DATA_DIR": "/srv/b"}).group_instance_id()
        >>> a != b and a.startswith(f"pulse-{socket.gethostname()}-")
        True
        """
        worker = self.worker_id
        if not worker:
            where = os.path.abspath(self.data_dir)
            worker = f"{socket.gethostname()}-{hashlib.sha256(where.encode()).hexdigest()[:10]}"
        return f"{self.app_id}-{worker}-{self.web_port}"

    def topic(self, name: str) -> str:
        """Full topic name for a short name such as ``events`` or ``events.dlq``."""
        return f"{self.topic_prefix}{name}"

    @property
    def dedup_log(self) -> str:
        """The dedup log topic: one record of new event ids per partition per batch.

        >>> Settings.from_env({}).dedup_log
        'pulse-dedup-log'
        """
        return f"{self.app_id}-dedup-log"

    @property
    def dedup_log_retention_ms(self) -> int:
        """Kept for the TTL plus the last segment an id may still be remembered in, plus 1 h.

        >>> Settings.from_env({"PULSE_DEDUP_TTL": "8h"}).dedup_log_retention_ms
        36000000
        """
        ttl = int(self.dedup_ttl_s * 1000)
        return ttl + ttl // 8 + 3_600_000

    def pipeline_config(self) -> PipelineConfig:
        """The stages' config: these times in ms and the rules file, loaded once."""
        return PipelineConfig.load(
            self.rules_file or None,
            window_ms=int(self.window_s * 1000),
            grace_ms=int(self.grace_s * 1000),
            attribution_ms=int(self.attribution_window_s * 1000),
            dedup_ttl_ms=int(self.dedup_ttl_s * 1000),
            partitions=self.partitions,
            salt=self.pseudonymize_salt,
            state_key=StateKey(self.state_key, self.app_id),
            fx=FxRates(self.currency),
            attribution_half_life_ms=int(self.attribution_half_life_s * 1000),
            attribution_views=self.attribution_views,
            offer_holdout=self.offer_holdout,
            session_gap_ms=int(self.reco_session_gap_s * 1000),
        )

    def with_(self, **changes: object) -> Settings:
        """Copy with some fields changed (tests, demo)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def check_kafka_security(self) -> None:
        """Raise ``ValueError`` naming the variable to fix when the security settings clash."""
        protocol, mechanism = self.kafka_security_protocol, self.kafka_sasl_mechanism
        if protocol not in SECURITY_PROTOCOLS:
            raise ValueError(
                f"PULSE_KAFKA_SECURITY_PROTOCOL={protocol!r} is not supported; "
                f"use one of {', '.join(SECURITY_PROTOCOLS)}"
            )
        sasl = protocol.startswith("SASL_")
        if sasl and not mechanism:
            raise ValueError(
                f"PULSE_KAFKA_SECURITY_PROTOCOL={protocol} needs PULSE_KAFKA_SASL_MECHANISM "
                f"({', '.join(SASL_MECHANISMS)}) plus PULSE_KAFKA_USERNAME and PULSE_KAFKA_PASSWORD"
            )
        if mechanism and not sasl:
            raise ValueError(
                f"PULSE_KAFKA_SASL_MECHANISM={mechanism} is set but "
                f"PULSE_KAFKA_SECURITY_PROTOCOL={protocol} sends no credentials; "
                "set PULSE_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT or SASL_SSL"
            )
        if mechanism and mechanism not in SASL_MECHANISMS:
            raise ValueError(
                f"PULSE_KAFKA_SASL_MECHANISM={mechanism!r} is not supported; "
                f"use one of {', '.join(SASL_MECHANISMS)}"
            )
        if sasl and not self.kafka_username:
            raise ValueError(
                f"PULSE_KAFKA_SASL_MECHANISM={mechanism} needs PULSE_KAFKA_USERNAME "
                "(and PULSE_KAFKA_PASSWORD)"
            )
        if self.kafka_ssl_cafile and not os.path.isfile(self.kafka_ssl_cafile):
            raise ValueError(
                f"PULSE_KAFKA_SSL_CAFILE={self.kafka_ssl_cafile!r} is not a readable file; "
                "point it at the PEM file of the CA that signed the brokers' certificates"
            )

    def kafka_ssl_context(self) -> ssl.SSLContext | None:
        """TLS context for SSL / SASL_SSL (system CAs, or PULSE_KAFKA_SSL_CAFILE)."""
        if self.kafka_security_protocol not in ("SSL", "SASL_SSL"):
            return None
        from aiokafka.helpers import create_ssl_context

        return create_ssl_context(cafile=self.kafka_ssl_cafile or None)

    def kafka_client_kwargs(self) -> dict[str, object]:
        """Security keyword arguments shared by every aiokafka client.

        Raises ``ValueError`` (see :meth:`check_kafka_security`) on clashing settings.
        """
        self.check_kafka_security()
        kw: dict[str, object] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_sasl_mechanism:
            kw.update(
                sasl_mechanism=self.kafka_sasl_mechanism,
                sasl_plain_username=self.kafka_username,
                sasl_plain_password=self.kafka_password,
            )
        context = self.kafka_ssl_context()
        if context is not None:
            kw["ssl_context"] = context
        return kw
