"""Ingestion agent on ``pulse.events``: validate → deduplicate → count, DLQ the rest.

Thin glue around :class:`stream.core.ingest.Ingestor`; events are taken in
batches and every failure inside a batch is routed, never raised.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust

from stream.app import Runtime
from stream.core.ingest import RawRecord, dlq_record

log = logging.getLogger(__name__)


def register(app: faust.App, rt: Runtime) -> Any:
    events_topic = rt.topics["events"]
    dlq_topic = rt.topics["dlq"]
    dedup_table = rt.tables["dedup"]
    metrics = rt.metrics
    batch_size = rt.settings.batch_size

    async def send_dlq(items: list[tuple[bytes | None, bytes]]) -> None:
        for key, value in items:
            await dlq_topic.send(key=key, value=value)

    @app.agent(events_topic, name="pulse-ingest")
    async def ingest(stream: Any) -> None:  # faust.Stream (take_events is not on StreamT)
        send_changelog = dedup_table.send_changelog
        async for events in stream.take_events(batch_size, within=0.05):
            now_ms = int(time.time() * 1000)
            records: list[RawRecord] = []
            for ev in events:
                m = ev.message
                records.append((m.key, m.value, m.partition, m.offset, int(m.timestamp * 1000)))
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
                continue
            dedup.expire(now_ms)
            for partition, event_id, value in dedup.drain_writes():
                if value is None:
                    send_changelog(partition, event_id, None, value_serializer="raw")
                else:
                    send_changelog(partition, event_id, value)
            if result.dlq:
                await send_dlq(result.dlq)
                metrics.count_invalid(result.invalid)
            if result.duplicates:
                metrics.duplicates.inc(result.duplicates)
            metrics.count_events(result.valid, now_ms)

    return ingest
