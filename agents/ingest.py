"""Ingestion on ``pulse.events``: validate → deduplicate → window per partition → partials.

Thin glue around :class:`stream.core.pipeline.PartitionStage`. :meth:`IngestAgent.handle`
turns a batch of raw records into the writes it needs, in this order: DLQ
records and offers, the dedup log (one record of new event ids per partition),
partials of closed windows, then the
window state changelogs (last clicks, window snapshots, a model checkpoint when
due). :meth:`IngestAgent.attach` runs it on Faust: the writes are acknowledged
one after the other and only then are the source offsets acknowledged. A crash
anywhere replays the batch; offsets stored in the window snapshot make the
replay idempotent, and the merger ignores partials it has already merged.

>>> from stream.config import Settings
>>> rt = Runtime.offline(Settings.from_env({}))
>>> out = IngestAgent(rt).handle([(b"u1", b"not json", 0, 0, 1_000)], now_ms=2_000)
>>> [s.topic for s in out.sends if s], dict(out.stage.result.invalid)
(['pulse.events.dlq'], {'invalid_json': 1})
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from aiokafka import TopicPartition

from agents.unreadable import Unreadable, stop_restore, unreadable
from stream.core.dedup import DedupRecordError
from stream.core.ingest import RawRecord, dlq_record
from stream.core.merge import encode_windows
from stream.core.pipeline import StageOutput
from stream.core.progress import caught_up
from stream.core.sealing import StateRecordError
from stream.kafka.faust_internals import (
    ack_all,
    message_batches,
    partition_progress,
    recovery_pending,
)
from stream.kafka.reading import TopicMissing, read_records
from stream.memory import release_free_memory
from stream.runtime import ByPartition, Runtime, Send

log = logging.getLogger(__name__)


@dataclass
class IngestOutput:
    """What one batch produced: the writes, in order, and the stage's output (for metrics)."""

    sends: list[Send] = field(default_factory=list)
    stage: StageOutput | None = None


class IngestAgent:
    """Validate, dedup and window ``pulse.events`` batches; emit partials and state."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        s = rt.settings
        self.dlq_topic = s.topic("events.dlq")
        self.partials_topic = s.topic("metrics.partials")
        self.triggers_topic = s.topic("triggers")
        self.offers_topic = s.topic("offers")
        self.events_topic = s.topic("events")
        self.idle_ms = int((s.window_s + s.grace_s) * 1000)

    def handle(self, records: list[RawRecord], now_ms: int) -> IngestOutput:
        """The writes for one batch of ``(key, value, partition, offset, timestamp_ms)``."""
        rt = self.rt
        stage = rt.stage
        out = stage.process(records, now_ms)
        with stage.clock.stage("state"):
            sends = self.state_sends(out, now_ms)
        return IngestOutput(sends, out)

    def state_sends(self, out: StageOutput, now_ms: int) -> list[Send]:
        """A processed batch's outputs and state records, in the order they are written."""
        rt = self.rt
        dedup = rt.stage.ingestor.dedup
        if dedup.expire(now_ms):
            release_free_memory()  # a whole segment was freed
        now = time.monotonic()
        for p in out.touched:
            rt.last_activity[p] = now
        sends = [Send(self.dlq_topic, out.result.dlq + out.late, failpoint="ingest-after-dlq")]
        sends.append(
            Send(
                self.triggers_topic,
                [(t["target"]["user_id"].encode(), orjson.dumps(t)) for t in out.offers],
                failpoint="ingest-after-offers",
            )
        )
        if out.outcomes:  # offered and held-out users, once their window passed
            sends.append(
                Send(
                    self.offers_topic,
                    [(o["user_id"].encode(), orjson.dumps(o)) for o in out.outcomes],
                )
            )
        # link notices and handovers, to the partitions of the ids they name: outside the
        # transaction (pulse.events is read), applying one twice changes nothing
        sends.append(Send(self.events_topic, out.internal, outside=True))
        books: ByPartition = {}
        for p in out.touched:
            book = rt.stage.identities.get(p)
            if book is not None and book.dirty:
                books[p] = [
                    (orjson.dumps(k), None if rec is None else orjson.dumps(rec))
                    for k, rec in book.drain()
                ]
        sends.append(Send(rt.changelogs["identities"], by_partition=books, what="identities"))
        seal = rt.state_key.seal
        ids: ByPartition = {p: [(b"%d" % p, seal(rec))] for p, rec in dedup.drain_records().items()}
        sends.append(
            Send(
                rt.settings.dedup_log,
                by_partition=ids,
                what="dedup log",
                failpoint="ingest-after-dedup-log",
            )
        )
        sends += self.publish(set(out.touched))
        return sends

    def publish(self, partitions: Iterable[int], idle: bool = False) -> list[Send]:
        """Close what the watermarks allow: partials, then snapshots of the window state."""
        rt = self.rt
        stage = rt.stage
        partials = stage.close(partitions, rt.idle_watermark() if idle else None)
        sends = [
            Send(
                self.partials_topic,
                [
                    (
                        str(p).encode(),
                        orjson.dumps(
                            {"partition": p, "closed_until": cu, "windows": encode_windows(closed)}
                        ),
                    )
                    for p, cu, closed in partials
                ],
                failpoint="ingest-after-partials",
            )
        ]
        snapshot = set(partitions) if not idle else {p for p, _, _ in partials}
        if idle and snapshot:
            log.info("idle partitions %s caught up: windows closed on the wall clock", snapshot)
        snapshots: ByPartition = {}
        clicks: ByPartition = {}
        for p in snapshot:
            pw = stage.window_state(p)
            snapshots[p] = [(orjson.dumps(str(p)), orjson.dumps(pw.to_state()))]
            changed = pw.drain_clicks()
            if changed:
                clicks[p] = [  # [ts, campaign, variant, channel, partition, earlier, converted]
                    (orjson.dumps(u), None if c is None else orjson.dumps([*c[:4], p, *c[4:]]))
                    for u, c in changed
                ]
        # Clicks before the window snapshot: a crash between the two replays the batch
        # (its offsets are not in the snapshot yet), re-deriving the same last clicks.
        sends.append(
            Send(rt.changelogs["clicks"], by_partition=clicks, failpoint="ingest-after-clicks")
        )
        sends.append(
            Send(rt.changelogs["windows"], by_partition=snapshots, failpoint="ingest-after-windows")
        )
        now = time.monotonic()
        models: ByPartition = {}
        recos: ByPartition = {}
        due = rt.settings.checkpoint_s
        for p in snapshot:  # a bounded checkpoint interval per partition
            if now - rt.last_checkpoint.get(p, 0.0) < due:
                continue
            model, reco = stage.models.get(p), stage.recommenders.get(p)
            if model is None and reco is None:
                continue
            rt.last_checkpoint[p] = now
            key = orjson.dumps(str(p))
            if model is not None:
                models[p] = [(key, orjson.dumps(rt.model_blob(model)))]
            if reco is not None:
                recos[p] = [(key, orjson.dumps(rt.model_blob(reco)))]
        if models:
            sends.append(
                Send(rt.changelogs["models"], by_partition=models, failpoint="ingest-after-models")
            )
        if recos:
            sends.append(Send(rt.changelogs["recommenders"], by_partition=recos))
        return sends

    def count(self, out: IngestOutput, now_ms: int) -> None:
        """Metrics of a delivered batch."""
        metrics, result = self.rt.metrics, out.stage
        if result is None:
            return
        with metrics.clock.stage("metrics"):
            self.count_stage(result, now_ms)

    def count_stage(self, result: StageOutput, now_ms: int) -> None:
        metrics = self.rt.metrics
        metrics.count_invalid(result.result.invalid)
        if result.late:
            metrics.count_invalid({"late": len(result.late)})
            metrics.late.inc(len(result.late))
        if result.result.duplicates:
            metrics.duplicates.inc(result.result.duplicates)
        metrics.count_events(result.result.valid, now_ms)
        metrics.count_campaign_events(result.counted)
        metrics.count_triggers(result.offers, now_ms)
        metrics.count_suppressed(result.held)
        metrics.count_segments(result.segments)
        metrics.count_identity(result.identity, result.handovers)
        refused = Counter(o for o in result.identity if o != "linked")
        if refused:
            log.info(
                "identity links refused (the ids stay apart): %s (see README, Identity stitching)",
                ", ".join(f"{why} {n}" for why, n in sorted(refused.items())),
            )
        auc, loss, labels = self.rt.stage.model_quality()
        if labels:
            metrics.observe_model("propensity", auc, loss)

    def failed(self, records: list[RawRecord], exc: BaseException) -> Send:
        """A batch that raised goes to the DLQ whole (a bug must not stop the worker)."""
        items = [
            (key, dlq_record("schema", f"internal error {exc!r}", value or b"", ts))
            for key, value, _, _, ts in records
        ]
        self.rt.metrics.count_invalid({"schema": len(items)})
        return Send(self.dlq_topic, items)

    async def commit_by_partition(self, records: list[RawRecord], now_ms: int) -> None:
        """One transaction per source partition: its writes and its next offset together.

        The partitions' transactions run concurrently, on their own producers.
        """
        by_partition: dict[int, list[RawRecord]] = {}
        for r in records:
            by_partition.setdefault(r[2], []).append(r)
        outs: list[IngestOutput] = []
        commits = []
        for p, recs in by_partition.items():
            try:
                out = self.handle(recs, now_ms)
                sends = out.sends
            except Exception as exc:  # a bug must not stop the worker: DLQ the batch
                log.exception("ingest batch failed; sending %d records to the DLQ", len(recs))
                out, sends = IngestOutput(), [self.failed(recs, exc)]
            outs.append(out)
            offsets = {TopicPartition(self.events_topic, p): recs[-1][3] + 1}
            commits.append(
                self.rt.commit(f"events-{p}", sends, offsets, failpoint="ingest-before-commit")
            )
        await asyncio.gather(*commits)
        for out in outs:
            self.count(out, now_ms)

    def idle_partitions(self, owned: Iterable[int], progress: Any, now_ms: int) -> set[int]:
        """Partitions without a valid event for window + grace *and* nothing left to process.

        ``progress(p)`` gives :func:`stream.core.progress.caught_up`'s keyword
        arguments: a backlog after a restart or a rebalance is processed first,
        never turned late.
        """
        rt, now = self.rt, time.monotonic()
        return {
            p
            for p in owned
            if (now - rt.last_activity.setdefault(p, now)) * 1000 >= self.idle_ms
            and caught_up(**progress(p), processed=rt.processed_offsets.get(p), now_ms=now_ms)
        }

    # -- recovery ------------------------------------------------------------------------

    async def restore_dedup(self, partitions: set[int]) -> int:
        """Rebuild the dedup index of ``partitions`` from the dedup log (and a legacy changelog).

        A record that does not decode stops the restore with its topic, partition
        and offset: it is never skipped.
        """
        if not partitions:
            return 0
        s = self.rt.settings
        dedup = self.rt.stage.ingestor.dedup
        now_ms = int(time.time() * 1000)
        t0 = time.monotonic()
        rows = await read_records(
            s,
            s.dedup_log,
            timeout_s=60,
            since_ms=now_ms - s.dedup_log_retention_ms,
            partitions=partitions,
            client="dedup-restore",
        )
        by_partition: dict[int, list[tuple[int, int, bytes]]] = {p: [] for p in partitions}
        for part, offset, ts, _, value in rows:
            if value is not None and part in by_partition:
                by_partition[part].append((offset, ts, value))
        rows.clear()
        read_s = time.monotonic() - t0
        n = 0
        unseal = self.rt.state_key.open
        for p in sorted(partitions):
            at = [-1]

            def values(p: int = p, at: list[int] = at) -> Iterator[tuple[int, bytes]]:
                for offset, ts, value in by_partition.pop(p):
                    at[0] = offset
                    yield ts, unseal(value, f"{s.dedup_log} partition {p} offset {offset}")

            try:
                n += dedup.restore(p, values(), now_ms)
            except DedupRecordError as exc:
                raise DedupRecordError(
                    f"{s.dedup_log} partition {p} offset {at[0]}: {exc}; the dedup state of "
                    "this partition cannot be restored (delete the record's segment or the "
                    "topic to start its dedup afresh)"
                ) from exc
        log.info(
            "dedup log of partitions %s read in %.1fs, %d ids indexed in %.1fs",
            sorted(partitions),
            read_s,
            n,
            time.monotonic() - t0 - read_s,
        )
        n += await self.migrate_legacy_dedup(partitions, now_ms)
        release_free_memory()  # the log records read
        return n

    async def migrate_legacy_dedup(self, partitions: set[int], now_ms: int) -> int:
        """Ids of the previous release's compacted ``<app>-dedup-changelog``, if it exists."""
        s = self.rt.settings
        try:
            rows = await read_records(
                s,
                f"{s.app_id}-dedup-changelog",
                timeout_s=60,
                partitions=partitions,
                client="dedup-migrate",
            )
        except TopicMissing:
            return 0
        latest: dict[str, Any] = {}
        for _, _, _, key, value in rows:
            if key is not None:
                latest[orjson.loads(key)] = None if value is None else orjson.loads(value)
        items = [(k, v) for k, v in latest.items() if v is not None]
        n = self.rt.stage.ingestor.dedup.restore_legacy(items, now_ms)
        if n:
            log.info("dedup: %d ids read from the previous release's changelog", n)
        return n

    def restore_windows(
        self,
        mine: set[int],
        windows: Iterable[tuple[Any, Any]],
        clicks: Iterable[tuple[Any, Any]],
        models: Iterable[tuple[Any, Any]],
        keep: set[int] | frozenset[int] = frozenset(),
        identities: Iterable[tuple[Any, Any]] = (),
        recommenders: Iterable[tuple[Any, Any]] = (),
    ) -> set[int]:
        """Window snapshots, last clicks and model checkpoints of the partitions in ``mine``.

        Partitions in ``keep`` were owned without a break through the rebalance:
        their state in memory is the newest (every snapshot was written from it,
        and a rebalance waits for the batch in progress), so it stays, and so do
        their models, which a checkpoint up to ``PULSE_CHECKPOINT_INTERVAL`` old
        would set back. State of partitions not in ``mine`` is dropped. Returns
        the partitions restored from the changelogs.
        """
        rt = self.rt
        stage = rt.stage
        kept = mine & keep
        restore = mine - kept
        stage.windows = {p: pw for p, pw in stage.windows.items() if p in kept}
        stage.models = {p: m for p, m in stage.models.items() if p in kept}
        stage.identities = {p: b for p, b in stage.identities.items() if p in kept}
        stage.recommenders = {p: r for p, r in stage.recommenders.items() if p in kept}
        for p, state in windows:
            if state is not None and int(p) in restore:
                with unreadable("windows", int(p), str(p)):
                    stage.windows[int(p)] = rt.pipeline.windows_from_state(state)
        for user, c in clicks:
            if c is not None and c[4] in restore:
                with unreadable("clicks", c[4], user):
                    stage.window_state(c[4]).restore_clicks([(user, c)])
        for key, rec in identities:
            if rec is not None and rec.get("p") in restore:
                with unreadable("identities", rec["p"], key):
                    stage.identity_state(rec["p"]).restore([(key, rec)])
        for p, blob in models:
            if blob is not None and int(p) in restore:
                with unreadable("models", int(p), str(p)):
                    model = rt.load_model(blob, "the model checkpoint")
                    if model is not None:
                        stage.models[int(p)] = model
        for p, blob in recommenders:
            if blob is not None and int(p) in restore:
                with unreadable("recommenders", int(p), str(p)):
                    where = "the recommender checkpoint"
                    stage.recommenders[int(p)] = rt.load_recommender(blob, where)
        return restore

    def forget(self, partitions: list[int]) -> None:
        """Revoked partitions: their read offsets are the next assignment's to learn.

        Their dedup index stays until the assignment is known (:meth:`keep_dedup`):
        a rebalance revokes every partition, and those assigned again without a
        break keep their index in memory (it is not restored for them).
        """
        for p in partitions:
            self.rt.processed_offsets.pop(p, None)

    def keep_dedup(self, mine: set[int]) -> None:
        """Drop the dedup index of every partition not in ``mine`` (they moved away)."""
        if self.rt.stage_built:
            gone = set(range(self.rt.settings.partitions)) - mine
            self.rt.stage.ingestor.dedup.forget_partitions(sorted(gone))

    # -- Faust wiring --------------------------------------------------------------------

    def attach(self, app: faust.App, events_topic: Any, tables: dict[str, Any]) -> None:
        rt, s = self.rt, self.rt.settings
        events = s.topic("events")

        def owned() -> set[int]:
            return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == events}

        # Recovery barrier. A rebalance bumps rt.generation (after the batch in progress);
        # a batch read before that, or while this generation's state is still being
        # restored, is neither processed nor acknowledged: Faust seeks to the committed
        # offsets once recovery is done, so those records are read again.
        held: set[int] = set()  # partitions whose state in memory is current

        async def _revoked(app: Any, revoked: Any = (), **kwargs: Any) -> None:
            await rt.new_generation()
            gone = [tp.partition for tp in revoked if tp.topic == events]
            self.forget(gone)
            if rt.transactions is not None:
                await rt.transactions.close(f"events-{p}" for p in gone)

        async def _assigned(app: Any, assigned: Any = (), **kwargs: Any) -> None:
            rt.assigned_generation = rt.generation
            mine = sorted(tp.partition for tp in assigned if tp.topic == events)
            held.intersection_update(mine)
            if rt.transactions is not None:  # aborts what a crashed owner left open
                await rt.transactions.open([f"events-{p}" for p in mine])

        def stale() -> bool:
            """The recovery completing is not the current assignment's: the next one restores."""
            return recovery_pending(app) or rt.assigned_generation != rt.generation

        async def _windows_recovered(**kwargs: Any) -> None:
            if stale():
                log.info("a newer rebalance is under way: window state is restored after it")
                return
            mine = owned()
            try:
                restored_now = self.restore_windows(
                    mine,
                    tables["windows"].data.items(),
                    tables["clicks"].data.items(),
                    tables["models"].data.items(),
                    keep=held,
                    identities=tables["identities"].data.items(),
                    recommenders=tables["recommenders"].data.items(),
                )
            except Unreadable as bad:  # never skipped: the worker stops, saying where
                err = await bad.located(s, rt.changelogs[bad.table])
                await stop_restore(app, err, rt.metrics, bad.table)
                return
            self.keep_dedup(mine)
            t0 = time.monotonic()
            try:
                ids = await self.restore_dedup(restored_now)
            except (DedupRecordError, StateRecordError) as exc:
                await stop_restore(app, exc, rt.metrics, "dedup")
                return
            if stale():  # a newer rebalance began while the dedup log was read
                return
            held.clear()
            held.update(mine)
            rt.recovered = True
            rt.restored_generation = rt.generation
            log.info(
                "state restored for partitions %s (%d event ids in %.1fs), kept in memory for %s",
                sorted(restored_now),
                ids,
                time.monotonic() - t0,
                sorted(mine - restored_now),
            )

        app.on_partitions_revoked.connect(_revoked)  # type: ignore[arg-type]
        app.on_partitions_assigned.connect(_assigned)  # type: ignore[arg-type]
        tables["windows"].on_recover(_windows_recovered)

        @app.task
        async def ingest() -> None:
            async for messages in message_batches(events_topic, s.batch_size):
                seen = rt.generation  # read with the batch, before any await
                if rt.fx_ready is not None and not rt.fx_ready.is_set():
                    await rt.fx_ready.wait()  # every rate written before start is known
                async with rt.lock:
                    if seen != rt.generation or not rt.state_current:
                        log.info(
                            "%d records read before or during a rebalance are not processed "
                            "here: they are read again from the committed offsets",
                            len(messages),
                        )
                        continue
                    processed = rt.processed_offsets
                    for m in messages:  # every record, also duplicates and invalid ones
                        processed[m.partition] = m.offset
                    records: list[RawRecord] = [
                        (m.key, m.value, m.partition, m.offset, int(m.timestamp * 1000))
                        for m in messages
                    ]
                    now_ms = int(time.time() * 1000)
                    if rt.transactions is not None:
                        await self.commit_by_partition(records, now_ms)
                        continue  # the offsets are committed with the batch
                    try:
                        out = self.handle(records, now_ms)
                        await rt.deliver(out.sends)
                        self.count(out, now_ms)
                    except Exception as exc:  # a bug must not stop the worker: DLQ the batch
                        log.exception(
                            "ingest batch failed; sending %d records to the DLQ", len(messages)
                        )
                        await rt.deliver([self.failed(records, exc)])
                ack_all(app, messages)

        @app.timer(interval=1.0)
        async def close_idle_partitions() -> None:
            """Idle partitions close their windows on the wall clock, once caught up."""
            if not rt.recovered:
                return
            async with rt.lock:  # not in the middle of a batch
                if not rt.state_current:  # mid-rebalance: the state is being replaced
                    return
                idle = self.idle_partitions(
                    owned(),
                    lambda p: partition_progress(app, events, p),
                    int(time.time() * 1000),
                )
                if idle:
                    await asyncio.gather(
                        *(
                            rt.commit(f"events-{p}", self.publish({p}, idle=True))
                            for p in sorted(idle)
                        )
                    )
