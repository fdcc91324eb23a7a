"""Bounded reads of whole topics: from the start (or a time) to the end offsets at start.

Used by ``pulse report`` (closed windows and triggers) and by the merge agent,
which reads its own recent outputs back after a restart to drop repeats.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from stream.config import Settings
from stream.core.errors import PulseError

log = logging.getLogger(__name__)

Advance = Callable[[int], None]
#: ``(description, total)`` → a callback advancing that progress task.
ProgressFactory = Callable[[str, int | None], Advance]


class TopicMissing(PulseError, LookupError):
    """The topic does not exist on the broker."""


#: ``(partition, offset, timestamp_ms, key, value)`` of a record, as :func:`read_records` gives it
RawRow = tuple[int, int, int, bytes | None, bytes | None]


async def read_topic(
    settings: Settings,
    topic: str,
    timeout_s: float = 10,
    progress: ProgressFactory | None = None,
    since_ms: int | None = None,
    client: str = "report",
    hint: str = "or report from a backtest with --from DIR",
) -> list[dict[str, Any]]:
    """Every JSON-object value of ``topic``, from the first offset to the end offsets.

    With ``since_ms``, from the first record timestamped at or after it instead
    (the merge agent reads its recent outputs back so). Tombstones are skipped,
    and so are values that are not JSON objects (counted in a warning). The rest
    as :func:`read_records`.
    """
    out: list[dict[str, Any]] = []
    skipped = 0
    for *_, raw in await read_records(
        settings, topic, timeout_s, progress, since_ms, client=client, hint=hint
    ):
        if raw is None:
            continue
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            out.append(value)
        else:
            skipped += 1
    if skipped:
        log.warning("%s: skipped %d records that are not JSON objects", topic, skipped)
    return out


async def read_records(
    settings: Settings,
    topic: str,
    timeout_s: float = 10,
    progress: ProgressFactory | None = None,
    since_ms: int | None = None,
    partitions: Iterable[int] | None = None,
    client: str = "report",
    hint: str = "or report from a backtest with --from DIR",
) -> list[RawRow]:
    """The records of ``topic`` (or of its ``partitions``) up to the end offsets at start.

    From the first offset, or with ``since_ms`` from the first record timestamped
    at or after it; in offset order per partition. ``timeout_s`` bounds connecting
    and any stretch without progress; a broker that stalls longer raises
    :class:`TimeoutError`. Records written meanwhile are left for the next read.
    Raises :class:`TopicMissing` when the topic does not exist.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        client_id=f"{settings.app_id}-{client}",
        request_timeout_ms=max(int(timeout_s * 1000), 5000) + 1000,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        **settings.kafka_client_kwargs(),
    )
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
    except (TimeoutError, KafkaError, OSError) as exc:
        await consumer.stop()
        raise ConnectionError(
            f"cannot reach Kafka at {settings.kafka_bootstrap} ({exc!r}); start one with "
            f"`pulse broker`, set PULSE_KAFKA_BOOTSTRAP, {hint}"
        ) from None
    out: list[RawRow] = []
    try:
        if topic not in await consumer.topics():  # checked first: never auto-create it
            raise TopicMissing(topic)
        if partitions is None:
            consumer.subscribe([topic])  # without a group, every partition is assigned to us
            deadline = time.monotonic() + timeout_s
            while not consumer.assignment():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no partition metadata for {topic} within {timeout_s:.0f}s")
                await asyncio.sleep(0.05)
        else:
            consumer.assign([TopicPartition(topic, p) for p in sorted(set(partitions))])
        tps = sorted(consumer.assignment())
        if not tps:
            return out
        end = await consumer.end_offsets(tps)
        if since_ms is None:
            await consumer.seek_to_beginning(*tps)
            begin = await consumer.beginning_offsets(tps)
        else:
            found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
            begin = {tp: end[tp] if found[tp] is None else found[tp].offset for tp in tps}
            for tp in tps:
                consumer.seek(tp, begin[tp])
        total = sum(max(0, end[tp] - begin[tp]) for tp in tps)
        advance = progress(topic, total) if progress else None
        pending = {tp for tp in tps if end[tp] > begin[tp]}
        last_progress = time.monotonic()
        while pending:
            batches = await consumer.getmany(*pending, timeout_ms=500, max_records=5000)
            moved = 0
            for tp, messages in batches.items():
                moved += len(messages)
                stop = end[tp]
                out.extend(
                    (tp.partition, m.offset, m.timestamp, m.key, m.value)
                    for m in messages
                    if m.offset < stop
                )
                if messages and advance:
                    advance(len(messages))
            for tp in list(pending):
                if await consumer.position(tp) >= end[tp]:
                    pending.discard(tp)
            if moved:
                last_progress = time.monotonic()
            elif pending and time.monotonic() - last_progress > timeout_s:
                raise TimeoutError(
                    f"reading {topic} stalled for {timeout_s:.0f}s with {len(out):,} of about "
                    f"{total:,} records read; check the broker at {settings.kafka_bootstrap}"
                )
    finally:
        await consumer.stop()
    return out


async def last_data_offsets(
    settings: Settings, ends: dict[tuple[str, int], int], timeout_s: float = 30
) -> dict[tuple[str, int], int]:
    """Offset of the last committed record before ``ends`` (a partition's LSO), or -1.

    A partition written in transactions ends with a commit (or abort) marker: it
    has an offset but no record, so ``end - 1`` is not a record a reader ever
    receives. This reads each partition's tail ``read_committed`` (further back
    while only markers or aborted records are found) and returns what a reader
    of the partition up to ``end`` receives last.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    out = {key: -1 for key in ends}
    todo = {TopicPartition(t, p): end for (t, p), end in ends.items() if end > 0}
    if not todo:
        return out
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        client_id=f"{settings.app_id}-recovery-tail",
        **settings.kafka_client_kwargs(),
    )
    await asyncio.wait_for(consumer.start(), timeout_s)
    try:
        consumer.assign(list(todo))
        begin = await consumer.beginning_offsets(list(todo))
        step = 16
        deadline = time.monotonic() + timeout_s
        while todo:
            start = {tp: max(begin[tp], end - step) for tp, end in todo.items()}
            for tp, offset in start.items():
                consumer.seek(tp, offset)
            pending = set(todo)
            while pending:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"reading the tails of {sorted(pending)} stalled")
                batches = await consumer.getmany(*pending, timeout_ms=200)
                for tp, messages in batches.items():
                    for m in messages:
                        if m.offset < todo[tp]:
                            out[(tp.topic, tp.partition)] = max(
                                out[(tp.topic, tp.partition)], m.offset
                            )
                for tp in list(pending):
                    if await consumer.position(tp) >= todo[tp]:
                        pending.discard(tp)
            for tp in list(todo):  # found, or nothing before the tail read: done
                if out[(tp.topic, tp.partition)] >= 0 or start[tp] <= begin[tp]:
                    del todo[tp]
            step *= 8
    finally:
        await consumer.stop()
    return out
