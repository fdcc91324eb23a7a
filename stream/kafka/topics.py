"""Create Pulse's topics on the broker (idempotent) with the configured partitions.

:func:`ensure_topics` is every command's first contact with Kafka, so it also
tells a refused login (:class:`KafkaSecurityError`, fatal: retrying cannot help)
from a broker that is not up yet (``KafkaConnectionError``, worth retrying).
"""

from __future__ import annotations

import contextlib
import logging
import ssl

from aiokafka import errors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.conn import create_conn
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.protocol.metadata import MetadataRequest

from stream.config import Settings
from stream.core.errors import PulseError

log = logging.getLogger(__name__)


class KafkaSecurityError(PulseError):
    """The broker answered but refused this client's security settings."""


def _hostports(bootstrap: str) -> list[tuple[str, int]]:
    out = []
    for item in bootstrap.split(","):
        host, _, port = item.strip().rpartition(":")
        if host and port.isdigit():
            out.append((host.strip("[]"), int(port)))
    return out


async def security_problem(settings: Settings, timeout_s: float = 10.0) -> str | None:
    """Connect to each bootstrap broker; say what is wrong when one refuses our login.

    ``None`` when no broker answered (down, unreachable) or the login works.
    The message names the variables to check and never contains the password.
    """
    s = settings
    kwargs = s.kafka_client_kwargs()
    who = f"user {s.kafka_username!r} with {s.kafka_sasl_mechanism}"
    for host, port in _hostports(s.kafka_bootstrap):
        where = f"Kafka at {host}:{port}"
        try:
            conn = await create_conn(host, port, request_timeout_ms=int(timeout_s * 1000), **kwargs)
        except (errors.SaslAuthenticationFailed, errors.AuthenticationFailedError) as exc:
            return (
                f"SASL authentication failed: {where} rejected {who} ({exc}). Check "
                "PULSE_KAFKA_USERNAME and PULSE_KAFKA_PASSWORD, and that the user has "
                f"{s.kafka_sasl_mechanism} credentials on the broker "
                f"(kafka-configs --alter --add-config '{s.kafka_sasl_mechanism}=[password=...]' "
                "--entity-type users --entity-name <user>)"
            )
        except errors.UnsupportedSaslMechanismError as exc:
            return (
                f"{where} does not accept SASL mechanism {s.kafka_sasl_mechanism} ({exc}); "
                "set PULSE_KAFKA_SASL_MECHANISM to one its listener enables"
            )
        except errors.IllegalSaslStateError:
            return (
                f"{where} is not a SASL listener but PULSE_KAFKA_SECURITY_PROTOCOL="
                f"{s.kafka_security_protocol}; use the broker's SASL port in "
                "PULSE_KAFKA_BOOTSTRAP or set PULSE_KAFKA_SECURITY_PROTOCOL to PLAINTEXT/SSL"
            )
        except ssl.SSLError as exc:
            return (
                f"TLS handshake with {where} failed ({exc.reason or exc}); check that the port "
                "speaks TLS and that PULSE_KAFKA_SSL_CAFILE holds the CA of its certificate"
            )
        except (TimeoutError, OSError, errors.KafkaError):
            continue  # not up (yet): the caller retries
        try:
            await conn.send(MetadataRequest([]))
        except errors.KafkaConnectionError:
            if not s.kafka_security_protocol.startswith("SASL_"):
                # ApiVersions was answered, then the broker hung up on Metadata:
                # requests before a SASL login are refused that way.
                return (
                    f"{where} closed the connection before serving metadata: its listener "
                    "probably requires SASL; set PULSE_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT "
                    "(or SASL_SSL), PULSE_KAFKA_SASL_MECHANISM, PULSE_KAFKA_USERNAME and "
                    "PULSE_KAFKA_PASSWORD"
                )
        except (TimeoutError, errors.KafkaError):
            pass
        finally:
            conn.close()
    return None


#: the largest state record (a recommender checkpoint of a big catalog): its changelog's
#: max.message.bytes and the transactional producer's max request size
CHECKPOINT_MAX_BYTES = 16 * 1024 * 1024

#: short name -> extra topic config
TOPICS: dict[str, dict[str, str]] = {
    "events": {"max.message.bytes": str(16 * 1024 * 1024)},
    "events.dlq": {},
    "metrics": {},
    "triggers": {},
    "triggers.retry": {},  # `pulse deliver`: tries scheduled for later
    "triggers.dlq": {},  # `pulse deliver`: triggers given up on
    "offers": {},  # outcomes of offered and held-out users (the offer holdout)
    "campaigns": {"cleanup.policy": "compact"},
    "erasures": {"cleanup.policy": "compact"},  # `pulse erase` requests, co-partitioned with events
    "fx": {"cleanup.policy": "compact"},  # exchange rates, keyed CUR@valid_from (`pulse fx set`)
    # identity records (stream.core.identity), keyed by id: the identities table's changelog
    "identities": {"cleanup.policy": "compact"},
}
#: topics whose records carry ids as trackers sent them (events, DLQ) or a user's id in
#: triggers (the pseudonym with a salt): kept for PULSE_RAW_RETENTION (``pulse erase`` says so)
RAW_ID_TOPICS = ("events", "events.dlq", "triggers", "triggers.retry", "triggers.dlq", "offers")


def topic_config(settings: Settings, short: str) -> dict[str, str]:
    """The config a Pulse topic is created with.

    >>> from stream.config import Settings
    >>> topic_config(Settings.from_env({"PULSE_RAW_RETENTION": "2d"}), "events.dlq")
    {'retention.ms': '172800000'}
    """
    cfg = dict(TOPICS[short])
    if short in RAW_ID_TOPICS:
        cfg["retention.ms"] = str(int(settings.raw_retention_s * 1000))
    return cfg


#: internal topics with a fixed partition count
INTERNAL: dict[str, int] = {"metrics.partials": 1}


def dedup_log_topic(settings: Settings) -> NewTopic:
    """The dedup log, co-partitioned with ``pulse.events``: expired by retention, not compacted."""
    return NewTopic(
        name=settings.dedup_log,
        num_partitions=settings.partitions,
        replication_factor=settings.replication_factor,
        topic_configs={
            "cleanup.policy": "delete",
            "retention.ms": str(settings.dedup_log_retention_ms),
            "max.message.bytes": str(16 * 1024 * 1024),
        },
    )


def admin_client(settings: Settings) -> AIOKafkaAdminClient:
    """The admin client Pulse's commands create topics and read their configs with."""
    return AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=f"{settings.app_id}-admin",
        request_timeout_ms=15000,
        **settings.kafka_client_kwargs(),
    )


async def ensure_topics(settings: Settings) -> list[str]:
    """Create missing Pulse topics; return the names created."""
    admin = admin_client(settings)
    try:
        await admin.start()
    except errors.KafkaConnectionError:
        problem = await security_problem(settings)
        if problem:
            raise KafkaSecurityError(problem) from None
        raise
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(
                name=settings.topic(short),
                num_partitions=settings.partitions,
                replication_factor=settings.replication_factor,
                topic_configs=topic_config(settings, short),
            )
            for short in TOPICS
            if settings.topic(short) not in existing
        ] + [
            NewTopic(
                name=settings.topic(short),
                num_partitions=n,
                replication_factor=settings.replication_factor,
            )
            for short, n in INTERNAL.items()
            if settings.topic(short) not in existing
        ]
        if settings.dedup_log not in existing:
            wanted.append(dedup_log_topic(settings))
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker won the race
                await admin.create_topics(wanted)
            log.info("created topics %s", [t.name for t in wanted])
        return [t.name for t in wanted]
    finally:
        await admin.close()


async def retention_ms(settings: Settings, names: list[str]) -> dict[str, int | None]:
    """``retention.ms`` of each topic as the broker has it (-1: forever; None: unknown)."""
    admin = admin_client(settings)
    out: dict[str, int | None] = dict.fromkeys(names)
    await admin.start()
    try:
        wanted = [
            ConfigResource(ConfigResourceType.TOPIC, n, {"retention.ms": None}) for n in names
        ]
        for response in await admin.describe_configs(wanted):
            for error, _msg, _type, name, entries, *_ in response.resources:
                for entry in entries if not error else ():
                    if entry[0] == "retention.ms" and name in out:
                        out[name] = int(entry[1])
    finally:
        await admin.close()
    return out
