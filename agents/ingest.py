"""Ingestion agent on ``pulse.events``: validate → deduplicate → count, DLQ the rest.

Thin glue around :class:`stream.core.ingest.Ingestor`; events are taken in
batches and every failure inside a batch is routed, never raised.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import orjson

from stream.app import Runtime
from stream.batching import ack_all, message_batches
from stream.core.ingest import RawRecord, dlq_record
from stream.producer import KafkaUnavailable

log = logging.getLogger(__name__)


def register(app: faust.App, rt: Runtime) -> Any:
    events_topic = rt.topics["events"]
    dlq_topic = rt.settings.topic("events.dlq")
    changelog_topic = rt.tables["dedup"].changelog_topic.get_topic_name()
    metrics = rt.metrics
    batch_size = rt.settings.batch_size

    async def until_written(send: Callable[[], Awaitable[int]]) -> None:
        """Retry while Kafka cannot acknowledge: the batch is not acked until it is written."""
        delay = 0.5
        while True:
            try:
                await send()
                return
            except KafkaUnavailable as exc:
                log.warning("write failed, retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def send_dlq(items: list[tuple[bytes | None, bytes]]) -> None:
        await until_written(lambda: rt.writer.send_many(items, dlq_topic))

    async def write_changelog(writes: list[tuple[int, str, list[int] | None]]) -> None:
        """One producer batch per partition, acknowledged before the events are acked.

        Keys and values are JSON, as Faust encodes this table (key_type=str).
        """
        by_partition: dict[int, list[tuple[bytes, bytes | None]]] = {}
        for partition, event_id, value in writes:
            by_partition.setdefault(partition, []).append(
                (orjson.dumps(event_id), None if value is None else orjson.dumps(value))
            )
        if by_partition:
            await until_written(lambda: rt.writer.send_partitioned(changelog_topic, by_partition))

    async def handle(messages: list[Any]) -> None:
        now_ms = int(time.time() * 1000)
        records: list[RawRecord] = [
            (m.key, m.value, m.partition, m.offset, int(m.timestamp * 1000)) for m in messages
        ]
        dedup = rt.dedup()
        try:
            result = rt.ingestor.process(records, now_ms)  # type: ignore[union-attr]
        except Exception as exc:  # a bug must not stop the worker: DLQ the batch
            log.exception("ingest batch failed; sending %d records to the DLQ", len(records))
            items = [
                (k, dlq_record("schema", f"internal error {exc!r}", v or b"", ts))
                for k, v, _, _, ts in records
            ]
            metrics.count_invalid({"schema": len(items)})
            await send_dlq(items)
            return
        dedup.expire(now_ms)
        await write_changelog(dedup.drain_writes())
        if result.dlq:
            await send_dlq(result.dlq)
            metrics.count_invalid(result.invalid)
        if result.duplicates:
            metrics.duplicates.inc(result.duplicates)
        metrics.count_events(result.valid, now_ms)

    @app.task
    async def ingest() -> None:
        async for messages in message_batches(events_topic, batch_size):
            await handle(messages)
            ack_all(app, messages)

    return ingest
