"""Ingestion on ``pulse.events``: validate → deduplicate → window per partition → partials.

Thin glue around :mod:`stream.core.ingest` and :mod:`stream.core.windows`.
Per batch, in this order: partials of closed windows are sent (acked), then
the state changelogs (dedup ids, window snapshots, last clicks) are written
(acked), and only then are the source offsets acknowledged to Faust. A crash
anywhere replays the batch; offsets stored in the window snapshot make the
replay idempotent, and the merger ignores partials it has already merged.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust
import orjson

from stream.app import Runtime
from stream.batching import ack_all, message_batches
from stream.core.ingest import RawRecord, dlq_record
from stream.core.merge import encode_windows
from stream.core.windows import PartitionWindows
from stream.producer import until_written

log = logging.getLogger(__name__)

Changelog = dict[int, list[tuple[bytes, bytes | None]]]


def register(app: faust.App, rt: Runtime) -> Any:
    s = rt.settings
    events_topic = rt.topics["events"]
    dlq_topic = s.topic("events.dlq")
    partials_topic = s.topic("metrics.partials")
    changelogs = {name: rt.tables[name].changelog_topic.get_topic_name() for name in rt.tables}
    metrics = rt.metrics
    idle_ms = int((s.window_s + s.grace_s) * 1000)

    async def send(topic: str, items: list[tuple[bytes | None, bytes]]) -> None:
        if items:
            await until_written(lambda: rt.writer.send_many(items, topic))

    async def write_changelog(table: str, by_partition: Changelog) -> None:
        """One producer batch per partition; keys and values JSON as Faust encodes tables."""
        if by_partition:
            topic = changelogs[table]
            await until_written(lambda: rt.writer.send_partitioned(topic, by_partition))

    def window_state(p: int) -> PartitionWindows:
        pw = rt.windows.get(p)
        if pw is None:
            pw = rt.windows[p] = rt.new_partition_windows()
        return pw

    async def publish(touched: dict[int, PartitionWindows], force: set[int]) -> None:
        """Close what the watermarks allow, send partials, then snapshot state."""
        partials: list[tuple[bytes | None, bytes]] = []
        snapshots: Changelog = {}
        clicks: Changelog = {}
        for p, pw in touched.items():
            before = pw.closed_until
            closed = pw.close(rt.idle_watermark() if p in force else None)
            if p in force and pw.closed_until == before:
                continue  # idle and nothing new to close
            if pw.closed_until > before:
                body = {
                    "partition": p,
                    "closed_until": pw.closed_until,
                    "windows": encode_windows(closed),
                }
                partials.append((str(p).encode(), orjson.dumps(body)))
            snapshots[p] = [(orjson.dumps(str(p)), orjson.dumps(pw.to_state()))]
            changed = pw.drain_clicks()
            if changed:
                clicks[p] = [
                    (orjson.dumps(u), None if c is None else orjson.dumps([*c, p]))
                    for u, c in changed
                ]
        await send(partials_topic, partials)
        await write_changelog("windows", snapshots)
        await write_changelog("clicks", clicks)

    async def handle(messages: list[Any]) -> None:
        now_ms = int(time.time() * 1000)
        records: list[RawRecord] = [
            (m.key, m.value, m.partition, m.offset, int(m.timestamp * 1000)) for m in messages
        ]
        dedup = rt.dedup()
        result = rt.ingestor.process(records, now_ms)  # type: ignore[union-attr]
        dedup.expire(now_ms)
        touched: dict[int, PartitionWindows] = {}
        late: list[tuple[bytes | None, bytes]] = []
        counted = []
        for event, (p, offset) in zip(result.valid, result.positions, strict=True):
            pw = touched.get(p) or touched.setdefault(p, window_state(p))
            if offset <= pw.last_offset:
                continue  # already applied before a crash: replay is idempotent
            pw.last_offset = offset
            status = pw.add(event)
            if status == "late":
                late.append(_late_record(event, pw))
            elif isinstance(status, tuple):
                counted.append((status, event))
        for p in touched:
            rt.last_activity[p] = time.monotonic()
        await send(dlq_topic, result.dlq + late)
        writes: Changelog = {}
        for p, event_id, value in dedup.drain_writes():
            writes.setdefault(p, []).append(
                (orjson.dumps(event_id), None if value is None else orjson.dumps(value))
            )
        await write_changelog("dedup", writes)
        await publish(touched, set())
        metrics.count_invalid(result.invalid)
        if late:
            metrics.count_invalid({"late": len(late)})
            metrics.late.inc(len(late))
        if result.duplicates:
            metrics.duplicates.inc(result.duplicates)
        metrics.count_events(result.valid, now_ms)
        metrics.count_campaign_events(counted)

    def _late_record(event: dict[str, Any], pw: PartitionWindows) -> tuple[bytes | None, bytes]:
        key = (event.get("user_id") or event.get("anonymous_id") or "").encode() or None
        detail = (
            f"event time {event['ts']} falls in a window already closed at watermark "
            f"{pw.closed_until}: send events within PULSE_GRACE of the newest ones"
        )
        return key, dlq_record("late", detail, orjson.dumps(event), event["received_at"])

    @app.task
    async def ingest() -> None:
        async for messages in message_batches(events_topic, s.batch_size):
            async with rt.lock:
                try:
                    await handle(messages)
                except Exception as exc:  # a bug must not stop the worker: DLQ the batch
                    log.exception(
                        "ingest batch failed; sending %d records to the DLQ", len(messages)
                    )
                    items = [
                        (
                            m.key,
                            dlq_record(
                                "schema",
                                f"internal error {exc!r}",
                                m.value or b"",
                                int(m.timestamp * 1000),
                            ),
                        )
                        for m in messages
                    ]
                    metrics.count_invalid({"schema": len(items)})
                    await send(dlq_topic, items)
            ack_all(app, messages)

    @app.timer(interval=1.0)
    async def close_idle_partitions() -> None:
        """Idle partitions close their windows on the wall clock."""
        if not rt.recovered:
            return
        now = time.monotonic()
        events = s.topic("events")
        owned = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == events}
        idle = {p for p in owned if (now - rt.last_activity.setdefault(p, now)) * 1000 >= idle_ms}
        if idle:
            async with rt.lock:
                await publish({p: window_state(p) for p in idle}, idle)

    return ingest
