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
from stream.core.merge import decode_windows
from stream.producer import until_written

log = logging.getLogger(__name__)


def register(app: faust.App, rt: Runtime) -> Any:
    s = rt.settings
    metrics_topic = s.topic("metrics")
    triggers_topic = s.topic("triggers")
    changelog = rt.tables["merger"].changelog_topic.get_topic_name()

    async def handle(messages: list[Any]) -> None:
        stage = rt.merge
        partials = []
        for m in messages:
            if m.offset <= stage.merger.last_offset:
                continue  # merged before a restart
            try:
                body = orjson.loads(m.value)
                partials.append(
                    (body["partition"], body["closed_until"], decode_windows(body["windows"]))
                )
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                log.error("skipping unreadable partial at offset %d: %r", m.offset, exc)
            stage.merger.last_offset = m.offset
        out = stage.add(partials, int(time.time() * 1000))
        rt.metrics.count_suppressed(out.held)
        if out.drifts:
            rt.metrics.model_drift.labels("ctr").inc(len(out.drifts))
        if out.records:
            items = [(r["campaign_id"].encode(), orjson.dumps(r)) for r in out.records]
            await until_written(lambda: rt.writer.send_many(items, metrics_topic), "metrics")
            rt.metrics.observe_windows(out.records)
        if out.triggers:
            trig = [(t["target"]["campaign_id"].encode(), orjson.dumps(t)) for t in out.triggers]
            await until_written(lambda: rt.writer.send_many(trig, triggers_topic), "triggers")
            rt.metrics.count_triggers(out.triggers, int(time.time() * 1000))
        snapshot = stage.to_state()
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
