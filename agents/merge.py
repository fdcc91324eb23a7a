"""Merge agent: partials from every source partition → final records on ``pulse.metrics``.

Reads the single-partition internal topic ``<prefix>metrics.partials`` (so one
worker merges), emits each closed campaign × variant × channel window once,
snapshots the merger (with the partials offset it has applied and the time of
the snapshot) to its changelog, and only then acknowledges the partials.

Exactly once across crashes: a merger killed after emitting but before its
snapshot replays those partials and re-derives the same records and triggers.
So whenever a merger stage is (re)built from its snapshot, the agent first
reads ``pulse.metrics`` and ``pulse.triggers`` back from shortly before the
snapshot was written and hands what it finds to :meth:`MergeAgent.learn`
(:class:`stream.core.merge.EmittedOutputs`), which drops the repeats.

>>> from stream.config import Settings
>>> agent = MergeAgent(Runtime.offline(Settings.from_env({})))
>>> out = agent.handle([(0, b'{"partition": 0, "closed_until": 0, "windows": []}')], 1_000)
>>> out.outputs, agent.rt.merge.merger.last_offset
([], 0)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from aiokafka import TopicPartition

from agents.unreadable import Unreadable, stop_restore, unreadable
from stream.core.merge import decode_windows
from stream.core.pipeline import MergeOutput, MergeStage
from stream.failpoints import FAILPOINTS
from stream.kafka.faust_internals import ack_all, message_batches, recovery_pending
from stream.kafka.reading import read_topic
from stream.runtime import Runtime, Send

log = logging.getLogger(__name__)

#: read outputs back from this long before the snapshot's time (producer clock skew)
READ_BACK_MARGIN_MS = 60_000

Partial = tuple[int, bytes]  # (offset, value) of a record on the partials topic


@dataclass
class MergeResult:
    """One merge step: outputs (records, triggers) first, then the merger's snapshot."""

    outputs: list[Send] = field(default_factory=list)
    snapshot: Send | None = None
    merged: MergeOutput = field(default_factory=MergeOutput)


class MergeAgent:
    """Merge partials into window records and triggers; snapshot the merger."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        s = rt.settings
        self.metrics_topic = s.topic("metrics")
        self.triggers_topic = s.topic("triggers")
        self.partials_topic = s.topic("metrics.partials")
        self.read_from: int | None = None  # where the last read-back started (ms)

    def handle(self, partials: list[Partial], now_ms: int) -> MergeResult:
        """Merge a batch of partials (``(offset, value)``); the writes to make, in order."""
        with self.rt.metrics.clock.stage("merge"):
            return self.merged(partials, now_ms)

    def merged(self, partials: list[Partial], now_ms: int) -> MergeResult:
        stage = self.rt.merge
        decoded = []
        for offset, value in partials:
            if offset <= stage.merger.last_offset:
                continue  # merged before a restart
            try:
                body = orjson.loads(value)
                decoded.append(
                    (body["partition"], body["closed_until"], decode_windows(body["windows"]))
                )
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                log.error("skipping unreadable partial at offset %d: %r", offset, exc)
            stage.merger.last_offset = offset
        dropped = stage.emitted.dropped
        out = stage.add(decoded, now_ms)
        if stage.emitted.dropped > dropped:
            log.warning(
                "merger replay: %d outputs already sent before a crash were not sent again",
                stage.emitted.dropped - dropped,
            )
        result = MergeResult(merged=out)
        if out.records:
            items = [(r["campaign_id"].encode(), orjson.dumps(r)) for r in out.records]
            result.outputs.append(Send(self.metrics_topic, items, what="metrics"))
        if out.triggers:
            trig = [(t["target"]["campaign_id"].encode(), orjson.dumps(t)) for t in out.triggers]
            result.outputs.append(Send(self.triggers_topic, trig, what="triggers"))
        # the next read-back starts here: at the previous start while outputs learned
        # from it are still pending (they may belong to windows this snapshot has not
        # emitted), else now
        result.snapshot = self.snapshot(
            stage, now_ms if not stage.emitted else (self.read_from or 0)
        )
        return result

    def count(self, result: MergeResult, now_ms: int) -> None:
        metrics, out = self.rt.metrics, result.merged
        metrics.count_suppressed(out.held)
        if out.drifts:
            metrics.model_drift.labels("ctr").inc(len(out.drifts))
        if out.records:
            metrics.observe_windows(out.records)
        if out.triggers:
            metrics.count_triggers(out.triggers, now_ms)

    def snapshot(self, stage: MergeStage, written_at: int) -> Send:
        """The merger's state as its changelog record, stamped with ``written_at``."""
        state = {**stage.to_state(), "written_at": written_at}
        record = (orjson.dumps("merger"), orjson.dumps(state))
        return Send(self.rt.changelogs["merger"], by_partition={0: [record]}, what="merger state")

    def read_back_since(
        self, stage: MergeStage, state: Mapping[str, Any] | None
    ) -> tuple[int, Send | None]:
        """Where to read outputs back from for ``stage``, and a first-run marker to write.

        On the first run of an app id nothing was emitted yet: mark the start with
        a snapshot so a crash before the first real one reads back from here, not
        from the whole history of topics other app ids may have written to.
        """
        written = state.get("written_at") if state else None
        marker = None
        if written is None:
            written = int(time.time() * 1000)
            marker = self.snapshot(stage, written)
        self.read_from = written
        return max(written - READ_BACK_MARGIN_MS, 0), marker

    def learn(
        self, stage: MergeStage, metrics: list[dict[str, Any]], triggers: list[dict[str, Any]]
    ) -> None:
        """Outputs found on the topics that this stage's snapshot had not recorded."""
        stage.emitted.learn(metrics, triggers, stage.merger.emitted_until)

    # -- Faust wiring --------------------------------------------------------------------

    def attach(self, app: faust.App, partials_topic: Any, table: Any) -> None:
        rt, s = self.rt, self.rt.settings
        synced: list[MergeStage] = []  # the stage whose outputs were read back
        held = [False]  # the partials partition was owned without a break: rt.merge is current
        restored = [-1]  # the generation (rt.generation) the merger stage is restored for

        async def read_back(stage: MergeStage) -> None:
            since, marker = self.read_back_since(stage, table.data.get("merger"))
            if marker is not None:
                await rt.deliver([marker])
            started = time.monotonic()
            found = {
                name: await read_topic(
                    s,
                    name,
                    timeout_s=30,
                    since_ms=since,
                    client="merger-readback",
                    hint="then restart the worker",
                )
                for name in (self.metrics_topic, self.triggers_topic)
            }
            self.learn(stage, found[self.metrics_topic], found[self.triggers_topic])
            log.info(
                "merger read back %d records and %d triggers in %.1fs: %d emitted after its "
                "snapshot",
                len(found[self.metrics_topic]),
                len(found[self.triggers_topic]),
                time.monotonic() - started,
                len(stage.emitted),
            )

        async def step(messages: list[Any]) -> None:
            stage = rt.merge
            if not synced or synced[0] is not stage:
                await read_back(stage)
                synced[:] = [stage]
            now_ms = int(time.time() * 1000)
            result = self.handle([(m.offset, m.value) for m in messages], now_ms)
            if rt.transactions is not None:  # outputs, snapshot and partials offset at once
                sends = [*result.outputs, *([result.snapshot] if result.snapshot else [])]
                if result.outputs:
                    result.outputs[-1].failpoint = "merger-after-emit"
                if result.snapshot is not None:
                    result.snapshot.failpoint = "merger-after-snapshot"
                offsets = {TopicPartition(self.partials_topic, 0): messages[-1].offset + 1}
                await rt.commit("merger", sends, offsets, failpoint="merger-before-commit")
                self.count(result, now_ms)
                return
            await rt.deliver(result.outputs)
            self.count(result, now_ms)
            if result.outputs:  # crash tests: a step that emitted, before its snapshot
                FAILPOINTS.reached("merger-after-emit")
            if result.snapshot is not None:
                await rt.deliver([result.snapshot])
                FAILPOINTS.reached("merger-after-snapshot")

        def owns_partials() -> bool:
            return any(tp.topic == self.partials_topic for tp in app.assignor.assigned_actives())

        async def _revoked(app: Any, revoked: Any = (), **kwargs: Any) -> None:
            """Let a merge step in progress finish before the partials move to another worker."""
            async with rt.lock:
                if rt.transactions is not None:
                    await rt.transactions.close(["merger"])

        async def _assigned(app: Any, assigned: Any = (), **kwargs: Any) -> None:
            rt.assigned_generation = rt.generation
            mine = any(tp.topic == self.partials_topic for tp in assigned)
            held[0] = held[0] and mine
            if mine and rt.transactions is not None:  # aborts what a crashed merger left open
                await rt.transactions.open(["merger"])

        async def _recovered(**kwargs: Any) -> None:
            """Rebuild the merger from its snapshot unless it kept its partition throughout."""
            if recovery_pending(app) or rt.assigned_generation != rt.generation:
                return  # a recovery of an assignment already gone: the next one restores
            owned = owns_partials()
            if not held[0]:
                try:
                    with unreadable("merger", 0, "merger"):
                        rt.merge = rt.new_merge_stage(table.data.get("merger"))
                except Unreadable as bad:  # never skipped: the worker stops, saying where
                    err = await bad.located(rt.settings, rt.changelogs["merger"])
                    await stop_restore(app, err, rt.metrics, "merger")
                    return
            held[0] = owned
            restored[0] = rt.generation

        app.on_partitions_revoked.connect(_revoked)  # type: ignore[arg-type]
        app.on_partitions_assigned.connect(_assigned)  # type: ignore[arg-type]
        table.on_recover(_recovered)

        @app.task
        async def merge() -> None:
            async for messages in message_batches(partials_topic, 500):
                seen = rt.generation  # read with the batch, before any await
                async with rt.lock:
                    if seen != rt.generation or restored[0] != rt.generation:
                        continue  # read before or during a rebalance: read again after it
                    await step(messages)
                if rt.transactions is None:  # else the offset was committed with the step
                    ack_all(app, messages)
