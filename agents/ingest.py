"""Ingestion on ``pulse.events``: validate → deduplicate → window per partition → partials.

Thin glue around :mod:`stream.core.ingest` and :mod:`stream.core.windows`.
Per batch, in this order: partials of closed windows are sent (acked), then
the state changelogs (dedup ids, window snapshots, last clicks) are written
(acked), and only then are the source offsets acknowledged to Faust. A crash
anywhere replays the batch; offsets stored in the window snapshot make the
replay idempotent, and the merger ignores partials it has already merged.
"""

from __future__ import annotations

import base64
import logging
import pickle
import time
from typing import Any

import faust
import orjson

from stream.app import Runtime
from stream.core.ingest import RawRecord, dlq_record
from stream.core.merge import encode_windows
from stream.core.progress import caught_up
from stream.kafka.faust_internals import ack_all, message_batches, partition_progress
from stream.kafka.writer import until_written

log = logging.getLogger(__name__)

Changelog = dict[int, list[tuple[bytes, bytes | None]]]


def register(app: faust.App, rt: Runtime) -> Any:
    s = rt.settings
    events_topic = rt.topics["events"]
    dlq_topic = s.topic("events.dlq")
    partials_topic = s.topic("metrics.partials")
    triggers_topic = s.topic("triggers")
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

    async def publish(partitions: set[int], idle: bool = False) -> None:
        """Close what the watermarks allow, send partials, then snapshot window state."""
        stage = rt.stage
        partials = stage.close(partitions, rt.idle_watermark() if idle else None)
        await send(
            partials_topic,
            [
                (
                    str(p).encode(),
                    orjson.dumps(
                        {"partition": p, "closed_until": cu, "windows": encode_windows(closed)}
                    ),
                )
                for p, cu, closed in partials
            ],
        )
        snapshot = partitions if not idle else {p for p, _, _ in partials}
        if idle and snapshot:
            log.info("idle partitions %s caught up: windows closed on the wall clock", snapshot)
        snapshots: Changelog = {}
        clicks: Changelog = {}
        for p in snapshot:
            pw = stage.window_state(p)
            snapshots[p] = [(orjson.dumps(str(p)), orjson.dumps(pw.to_state()))]
            changed = pw.drain_clicks()
            if changed:
                clicks[p] = [
                    (orjson.dumps(u), None if c is None else orjson.dumps([*c, p]))
                    for u, c in changed
                ]
        # Clicks before the window snapshot: a crash between the two replays the batch
        # (its offsets are not in the snapshot yet), re-deriving the same last clicks.
        await write_changelog("clicks", clicks)
        await write_changelog("windows", snapshots)
        now = time.monotonic()
        if now - rt.last_checkpoint >= s.checkpoint_s:  # models: a bounded checkpoint interval
            rt.last_checkpoint = now
            models: Changelog = {
                p: [
                    (orjson.dumps(str(p)), orjson.dumps(base64.b64encode(pickle.dumps(m)).decode()))
                ]
                for p, m in stage.models.items()
            }
            await write_changelog("models", models)

    async def handle(messages: list[Any]) -> None:
        now_ms = int(time.time() * 1000)
        records: list[RawRecord] = [
            (m.key, m.value, m.partition, m.offset, int(m.timestamp * 1000)) for m in messages
        ]
        stage = rt.stage
        out = stage.process(records, now_ms)
        dedup = stage.ingestor.dedup
        dedup.expire(now_ms)
        now = time.monotonic()
        for p in out.touched:
            rt.last_activity[p] = now
        await send(dlq_topic, out.result.dlq + out.late)
        if out.offers:
            offers = [(t["target"]["user_id"].encode(), orjson.dumps(t)) for t in out.offers]
            await send(triggers_topic, offers)
        writes: Changelog = {}
        for p, event_id, value in dedup.drain_writes():
            writes.setdefault(p, []).append(
                (orjson.dumps(event_id), None if value is None else orjson.dumps(value))
            )
        await write_changelog("dedup", writes)
        await publish(set(out.touched))
        metrics.count_invalid(out.result.invalid)
        if out.late:
            metrics.count_invalid({"late": len(out.late)})
            metrics.late.inc(len(out.late))
        if out.result.duplicates:
            metrics.duplicates.inc(out.result.duplicates)
        metrics.count_events(out.result.valid, now_ms)
        metrics.count_campaign_events(out.counted)
        metrics.count_triggers(out.offers, now_ms)
        metrics.count_suppressed(out.held)
        metrics.count_segments(out.segments)
        auc, loss, labels = stage.model_quality()
        if labels:
            metrics.observe_model("propensity", auc, loss)

    @app.task
    async def ingest() -> None:
        async for messages in message_batches(events_topic, s.batch_size):
            async with rt.lock:
                processed = rt.processed_offsets
                for m in messages:  # every record, also duplicates and invalid ones
                    processed[m.partition] = m.offset
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
        """Idle partitions close their windows on the wall clock, once caught up.

        Idle means no valid event for window + grace seconds *and* nothing left
        to process (:func:`stream.core.progress.caught_up`): a backlog after a
        restart or a rebalance is processed first, never turned late.
        """
        if not rt.recovered:
            return
        events = s.topic("events")
        async with rt.lock:  # not in the middle of a batch
            now = time.monotonic()
            now_ms = int(time.time() * 1000)
            owned = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == events}
            idle = {
                p
                for p in owned
                if (now - rt.last_activity.setdefault(p, now)) * 1000 >= idle_ms
                and caught_up(
                    **partition_progress(app, events, p),
                    processed=rt.processed_offsets.get(p),
                    now_ms=now_ms,
                )
            }
            if idle:
                await publish(idle, idle=True)

    return ingest
