"""``pulse erase --user ID``: ask the workers to forget a user, then wait for their answer.

The request goes to the compacted ``pulse.erasures`` topic, keyed by a pseudonym
of the user's id, never the raw id (:func:`~stream.core.privacy.erase_key`: the
id as workers hold it when ``PULSE_PSEUDONYMIZE_SALT`` is set), in the partition
Kafka's default partitioner gives the raw id on ``pulse.events`` — the partition
whose worker holds the user's state. That
worker answers with an acknowledgement record (same key and partition).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from stream.config import Settings
from stream.core.errors import PulseError
from stream.core.identity import linked_ids
from stream.core.privacy import erase_request, read_erase_record
from stream.kafka.topics import RAW_ID_TOPICS, retention_ms

log = logging.getLogger(__name__)


class EraseError(PulseError, RuntimeError):
    """The request could not be written; the message says what to do."""


@dataclass
class EraseReceipt:
    user_key: str  # the request's key: a pseudonym (stream.core.privacy.erase_key)
    request_id: str
    topic: str
    partition: int
    offset: int
    ack: dict[str, Any] | None = None  # the worker's answer; None when none came in time
    waited_s: float = 0.0  # from sending the request to reading the acknowledgement
    #: topic -> retention.ms of the topics that keep the user's ids as records (RAW_ID_TOPICS)
    retention: dict[str, int | None] = field(default_factory=dict)


async def request_erasure(settings: Settings, user: str, wait_s: float = 60.0) -> EraseReceipt:
    """Write the erase request; wait up to ``wait_s`` for a worker's acknowledgement."""
    s = settings
    if not user:
        raise EraseError("--user is empty: pass the user_id or anonymous_id to erase")
    events, name = s.topic("events"), s.topic("erasures")
    request_id = uuid.uuid4().hex
    now_ms = int(time.time() * 1000)
    key, value = erase_request(user, s.pseudonymize_salt, s.app_id, request_id, now_ms)
    producer = AIOKafkaProducer(
        bootstrap_servers=s.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        client_id=f"{s.app_id}-erase",
        **s.kafka_client_kwargs(),
    )
    await producer.start()
    try:
        n_events = len(await producer.partitions_for(events))
        partitions = sorted(await producer.partitions_for(name))
        if len(partitions) != n_events:
            raise EraseError(
                f"{name} has {len(partitions)} partitions but {events} has {n_events}: "
                f"they must match; recreate {name} with {n_events} partitions"
            )
        partition = DefaultPartitioner()(user.encode(), partitions, partitions)
        sent_at = time.monotonic()
        sent = await producer.send(name, key=key.encode(), value=value, partition=partition)
        meta = await sent
    finally:
        await producer.stop()
    receipt = EraseReceipt(key, request_id, name, partition, meta.offset)
    if wait_s > 0:
        receipt.ack = await _wait_ack(s, receipt, wait_s)
        receipt.waited_s = time.monotonic() - sent_at
    try:
        receipt.retention = await retention_ms(s, [s.topic(t) for t in RAW_ID_TOPICS])
    except Exception as exc:  # the erasure is done; only the report is poorer
        log.warning("could not read the topics' retention.ms (%s)", exc)
    return receipt


async def linked_users(settings: Settings, user: str) -> list[str]:
    """``user`` and every id linked with it on ``pulse.identities`` (anonymous ids,
    aliases, the identity it went into), ``user`` first.

    With ``PULSE_PSEUDONYMIZE_SALT`` the records hold pseudonyms, which name no
    partition: only ``user`` is returned.
    """
    from stream.kafka.reading import TopicMissing, read_records

    if settings.pseudonymize_salt:
        return [user]
    try:
        rows = await read_records(settings, settings.topic("identities"), client="identities")
    except TopicMissing:
        return [user]
    records: dict[str, Any] = {}
    for *_, key, value in rows:
        if key is None:
            continue
        try:
            name = orjson.loads(key)
            records[str(name)] = None if value is None else orjson.loads(value)
        except orjson.JSONDecodeError:
            log.warning("skipping an unreadable pulse.identities record %r", key[:80])
    held = {k: v for k, v in records.items() if isinstance(v, dict)}
    return [user, *sorted(linked_ids(held, user) - {user})]


async def erased_keys(settings: Settings) -> set[str]:
    """The keys of every erase request on ``pulse.erasures`` (pseudonyms, never raw ids).

    ``pulse deliver replay`` skips a dead-lettered trigger whose user they name
    (:func:`~stream.core.privacy.erased_ids`).
    """
    from stream.kafka.reading import TopicMissing, read_records

    try:
        rows = await read_records(
            settings, settings.topic("erasures"), client="erasures",
            hint="and check PULSE_TOPIC_PREFIX",
        )  # fmt: skip
    except TopicMissing:
        return set()
    keys = set()
    for *_, key, value in rows:
        found = read_erase_record(key, value)
        if found is not None and "status" not in found[1]:
            keys.add(found[0])
    return keys


async def _wait_ack(
    settings: Settings, receipt: EraseReceipt, wait_s: float
) -> dict[str, Any] | None:
    """Read the request's partition after it until the worker's acknowledgement arrives."""
    tp = TopicPartition(receipt.topic, receipt.partition)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        client_id=f"{settings.app_id}-erase",
        isolation_level="read_committed",
        **settings.kafka_client_kwargs(),
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, receipt.offset + 1)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=500)
            for record in batch.get(tp, []):
                found = read_erase_record(record.key, record.value)
                if found is None:
                    continue
                _, ack = found
                if ack.get("request_id") == receipt.request_id and "status" in ack:
                    return ack
    finally:
        await consumer.stop()
    return None


def describe(user: str, receipt: EraseReceipt, wait_s: float) -> tuple[int, str]:
    """Exit code and the message ``pulse erase`` prints."""
    who = f"user {user!r}"
    if receipt.user_key != user:
        who += f" (pseudonym {receipt.user_key})"
    where = f"{receipt.topic} partition {receipt.partition} offset {receipt.offset}"
    head = f"erase request {receipt.request_id} for {who} written to {where}"
    ack = receipt.ack
    if ack is None:
        if wait_s <= 0:
            return 0, f"{head}; not waiting (--wait 0): a worker applies it when it reads it"
        return 3, (
            f"{head}, but no worker acknowledged it within {wait_s:g}s. It stays queued and "
            "is applied when a worker of this PULSE_APP_ID reads it: check that "
            "`pulse worker` runs with the same PULSE_APP_ID and PULSE_TOPIC_PREFIX, or "
            "rerun with a longer --wait"
        )
    if ack.get("status") == "salt_mismatch":
        return 2, (
            f"{head}, but the worker uses a different PULSE_PSEUDONYMIZE_SALT than this "
            "command, so nothing matched and nothing was erased: rerun `pulse erase` with "
            "the workers' PULSE_PSEUDONYMIZE_SALT"
        )
    return 0, (
        f"{head}; applied {receipt.waited_s:.2f}s after the request: last click removed (changelog "
        f"tombstone) on partitions {ack.get('clicks') or 'none held'}, model features "
        f"removed and checkpointed on partitions {ack.get('models') or 'none held'}, "
        f"recommendation sessions removed and their item statistics taken back on partitions "
        f"{ack.get('recommenders') or 'none held'}, segment cache dropped. "
        f"{kept(receipt.retention)}"
    )


def kept(retention: dict[str, int | None]) -> str:
    """What erase does not rewrite, and how long it stays (the topics' ``retention.ms``).

    >>> kept({"pulse.events": 604_800_000, "pulse.events.dlq": -1, "pulse.triggers": None})
    'Records already written are not rewritten; they expire with their topic: pulse.events \
after 7 days, pulse.events.dlq never (retention.ms=-1: set a retention), pulse.triggers \
(retention unknown) (see README, Privacy).'
    """
    if not retention:
        return (
            "Records already on pulse.triggers, pulse.events and pulse.events.dlq are not "
            "rewritten; they expire with their topics' retention (see README, Privacy)."
        )
    parts = [f"{topic} {_for(ms)}" for topic, ms in retention.items()]
    return (
        "Records already written are not rewritten; they expire with their topic: "
        f"{', '.join(parts)} (see README, Privacy)."
    )


def _for(ms: int | None) -> str:
    if ms is None:
        return "(retention unknown)"
    if ms < 0:
        return "never (retention.ms=-1: set a retention)"
    hours = ms / 3_600_000
    if hours >= 48 and hours % 24 == 0:
        return f"after {hours / 24:g} days"
    return f"after {hours:g} hours" if hours >= 1 else f"after {ms / 1000:g} s"
