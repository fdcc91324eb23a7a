"""Merge agent: partials from every source partition → final records on ``pulse.metrics``.

Reads the single-partition internal topic ``<prefix>metrics.partials`` (so one
worker merges), emits each closed campaign × variant × channel window once,
snapshots the merger (with the partials offset it has applied) to its
changelog, and only then acknowledges the partials.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust
import orjson

from stream.app import Runtime
from stream.batching import ack_all, message_batches
from stream.core.kpis import metric_record
from stream.core.merge import decode_windows
from stream.producer import until_written

log = logging.getLogger(__name__)


def register(app: faust.App, rt: Runtime) -> Any:
    s = rt.settings
    size_ms = int(s.window_s * 1000)
    metrics_topic = s.topic("metrics")
    triggers_topic = s.topic("triggers")
    changelog = rt.tables["merger"].changelog_topic.get_topic_name()

    async def handle(messages: list[Any]) -> None:
        merger = rt.merger
        for m in messages:
            if m.offset <= merger.last_offset:
                continue  # merged before a restart
            try:
                body = orjson.loads(m.value)
                merger.add_partial(
                    body["partition"], body["closed_until"], decode_windows(body["windows"])
                )
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                log.error("skipping unreadable partial at offset %d: %r", m.offset, exc)
            merger.last_offset = m.offset
        records = []
        triggers = []
        now_ms = int(time.time() * 1000)
        for ws, rows in merger.ready():
            per_campaign: dict[str, list[int]] = {}
            for (cid, vid, channel), row in sorted(rows.items()):
                settings = rt.campaign_settings.get(cid)
                records.append(metric_record(cid, vid, channel, ws, ws + size_ms, row, settings))
                acc = per_campaign.setdefault(cid, [0, 0, 0])
                for i in range(3):
                    acc[i] += row[i]
            for cid, (views, clicks, purchases) in per_campaign.items():
                fired, held = rt.engine.evaluate(
                    cid,
                    ws,
                    ws + size_ms,
                    views,
                    clicks,
                    purchases,
                    now_ms,
                    rt.campaign_settings.get(cid),
                )
                triggers.extend(fired)
                rt.metrics.count_suppressed(held)
        if records:
            items = [(r["campaign_id"].encode(), orjson.dumps(r)) for r in records]
            await until_written(lambda: rt.writer.send_many(items, metrics_topic), "metrics")
            rt.metrics.observe_windows(records)
        if triggers:
            out = [(t["target"]["campaign_id"].encode(), orjson.dumps(t)) for t in triggers]
            await until_written(lambda: rt.writer.send_many(out, triggers_topic), "triggers")
            rt.metrics.count_triggers(triggers, int(time.time() * 1000))
        snapshot = {**merger.to_state(), "engine": rt.engine.to_state()}
        state: dict[int, list[tuple[bytes, bytes | None]]] = {
            0: [(orjson.dumps("merger"), orjson.dumps(snapshot))]
        }
        await until_written(lambda: rt.writer.send_partitioned(changelog, state), "merger state")

    @app.task
    async def merge() -> None:
        async for messages in message_batches(rt.topics["partials"], 500):
            async with rt.lock:
                await handle(messages)
            ack_all(app, messages)

    return merge
