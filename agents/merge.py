"""Merge agent: partials from every source partition → final records on ``pulse.metrics``.

Reads the single-partition internal topic ``<prefix>metrics.partials`` (so one
worker merges), emits each closed campaign × variant × channel window once,
snapshots the merger (with the partials offset it has applied and the time of
the snapshot) to its changelog, and only then acknowledges the partials.

Exactly once across crashes: a merger killed after emitting but before its
snapshot replays those partials and re-derives the same records and triggers.
So whenever a merger stage is (re)built from its snapshot, the agent first
reads ``pulse.metrics`` and ``pulse.triggers`` back from shortly before the
snapshot was written and hands what it finds to
:class:`stream.core.merge.EmittedOutputs`, which drops the repeats.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Mapping
from typing import Any

import faust
import orjson
from aiokafka import AIOKafkaConsumer

from stream.app import Runtime
from stream.config import Settings
from stream.core.merge import decode_windows
from stream.core.pipeline import MergeStage
from stream.kafka.faust_internals import ack_all, message_batches
from stream.kafka.writer import until_written

log = logging.getLogger(__name__)

#: read outputs back from this long before the snapshot's time (producer clock skew)
READ_BACK_MARGIN_MS = 60_000
#: failpoint for crash tests: ``merger-after-emit:N`` makes the worker SIGKILL itself
#: after the N-th merge step that emitted something, before that step's snapshot
FAILPOINT_ENV = "FAILPOINTS"


async def read_outputs(
    settings: Settings, topics: list[str], since_ms: int
) -> dict[str, list[dict[str, Any]]]:
    """Every JSON record of ``topics`` with a timestamp ≥ ``since_ms``."""
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,  # no group: every partition of the topics is assigned
        enable_auto_commit=False,
        auto_offset_reset="latest",
        isolation_level="read_committed",
        client_id=f"{settings.app_id}-merger-readback",
        **settings.kafka_client_kwargs(),
    )
    await consumer.start()
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in topics}
    try:
        deadline = time.monotonic() + 30
        while {tp.topic for tp in consumer.assignment()} != set(topics):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no partitions assigned for {topics}")
            await asyncio.sleep(0.05)
        tps = sorted(consumer.assignment())
        ends = await consumer.end_offsets(tps)
        found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
        starts = {tp: ends[tp] if found[tp] is None else found[tp].offset for tp in tps}
        todo = {tp for tp in tps if starts[tp] < ends[tp]}
        for tp in tps:
            consumer.seek(tp, starts[tp])
        while todo:
            batches = await consumer.getmany(*todo, timeout_ms=1000, max_records=5000)
            for tp, msgs in batches.items():
                for m in msgs:
                    if m.offset < ends[tp] and m.value:
                        try:
                            out[tp.topic].append(orjson.loads(m.value))
                        except orjson.JSONDecodeError:
                            continue
            for tp in list(todo):
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
    finally:
        await consumer.stop()
    return out


def register(app: faust.App, rt: Runtime) -> Any:
    s = rt.settings
    metrics_topic = s.topic("metrics")
    triggers_topic = s.topic("triggers")
    partials_topic = s.topic("metrics.partials")
    changelog = rt.tables["merger"].changelog_topic.get_topic_name()
    synced: list[MergeStage] = []  # the stage whose outputs were read back
    read_from: list[int | None] = [None]  # where that read-back started (ms)
    revocations = [0]
    failpoint = os.environ.get(FAILPOINT_ENV, "")
    kill_after_emits = (
        int(failpoint.split(":", 1)[1]) if failpoint.startswith("merger-after-emit:") else 0
    )
    emits = [0]

    async def read_back(stage: MergeStage) -> None:
        """Learn what this stage's snapshot had not recorded as emitted yet."""
        state: Mapping[str, Any] | None = rt.tables["merger"].data.get("merger")
        written = state.get("written_at") if state else None
        if written is None:
            # First run of this app id: nothing emitted yet. Mark the start with a
            # snapshot so a crash before the first real one reads back from here, not
            # from the whole history of topics other app ids may have written to.
            written = int(time.time() * 1000)
            await write_snapshot(stage, written)
        since = max(written - READ_BACK_MARGIN_MS, 0)
        read_from[0] = written
        started = time.monotonic()
        found = await read_outputs(s, [metrics_topic, triggers_topic], since)
        until = stage.merger.emitted_until
        stage.emitted.learn(found[metrics_topic], found[triggers_topic], until)
        log.info(
            "merger read back %d records and %d triggers in %.1fs: %d emitted after its snapshot",
            len(found[metrics_topic]),
            len(found[triggers_topic]),
            time.monotonic() - started,
            len(stage.emitted),
        )

    async def handle(messages: list[Any]) -> None:
        stage = rt.merge
        if not synced or synced[0] is not stage:
            await read_back(stage)
            synced[:] = [stage]
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
        dropped = stage.emitted.dropped
        out = stage.add(partials, int(time.time() * 1000))
        if stage.emitted.dropped > dropped:
            log.warning(
                "merger replay: %d outputs already sent before a crash were not sent again",
                stage.emitted.dropped - dropped,
            )
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
        if out.records or out.triggers:
            emits[0] += 1
            if emits[0] == kill_after_emits:
                log.warning("failpoint %s: SIGKILL before the merger snapshot", failpoint)
                os.kill(os.getpid(), signal.SIGKILL)
        # the next read-back starts here: at the previous start while outputs learned
        # from it are still pending (they may belong to windows this snapshot has not
        # emitted), else now
        now_ms = int(time.time() * 1000)
        await write_snapshot(stage, now_ms if not stage.emitted else (read_from[0] or 0))

    async def write_snapshot(stage: MergeStage, written_at: int) -> None:
        snapshot = {**stage.to_state(), "written_at": written_at}
        state: dict[int, list[tuple[bytes, bytes | None]]] = {
            0: [(orjson.dumps("merger"), orjson.dumps(snapshot))]
        }
        await until_written(lambda: rt.writer.send_partitioned(changelog, state), "merger state")

    async def _revoked(app: Any, revoked: Any = (), **kwargs: Any) -> None:
        """Let a merge step in progress finish before the partials move to another worker."""
        if any(tp.topic == partials_topic for tp in revoked):
            revocations[0] += 1
            async with rt.lock:
                pass

    app.on_partitions_revoked.connect(_revoked)  # type: ignore[arg-type]

    @app.task
    async def merge() -> None:
        async for messages in message_batches(rt.topics["partials"], 500):
            seen = revocations[0]
            async with rt.lock:
                if seen != revocations[0]:
                    continue  # fetched before a rebalance: the new owner replays them
                await handle(messages)
            ack_all(app, messages)

    return merge
