"""The raw-message queue keeps what the fetcher put in it after the seek that ends recovery.

Issue 11: at the end of a recovery Faust resumes the stream partitions, seeks
them to their committed offsets with the flow already running (the fetcher
delivers meanwhile), and only then calls ``flow_control.resume()``, which clears
every agent queue. Records fetched during the seek were dropped, and the
consumer, having read their offsets, took the jump to the next record for an
acknowledged gap and committed past them.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.consumer.fetcher import OffsetResetStrategy
from faust.types import TP
from mode.utils.queues import FlowControlEvent

from stream.kafka.faust_internals import (
    RawQueue,
    message_topic,
    recover_latest_only,
    recovery_pending,
    rewind_to_committed,
)


class SeekingConsumer:
    """Just what ``Recovery.on_recovery_completed`` asks of the consumer."""

    def __init__(self, during_seek: Any) -> None:
        self.during_seek = during_seek

    def assignment(self) -> set[TP]:
        return {TP("events", 0)}

    def resume_partitions(self, tps: Any) -> None:
        pass

    async def perform_seek(self) -> None:
        self.during_seek()  # the fetcher delivers records read from the committed offsets

    def resume_flow(self) -> None:
        pass


class Fetcher:
    async def maybe_start(self) -> None:
        pass


async def test_records_fetched_during_the_final_seek_survive_the_end_of_recovery() -> None:
    app = faust.App("recovery-test", broker="kafka://localhost:1", web_enabled=False)
    raw = message_topic(app, "events", 1)
    plain = app.FlowControlQueue(maxsize=100, clear_on_resume=True)  # a Faust agent's queue

    def during_seek() -> None:
        for offset in (5, 6, 7):
            raw.queue.put_nowait(offset)
            plain.put_nowait(offset)

    app.consumer = SeekingConsumer(during_seek)  # type: ignore[assignment]
    app._fetcher = Fetcher()  # type: ignore[assignment]
    app.on_rebalance_end = lambda: None  # type: ignore[method-assign]
    app.assignor.assigned_standbys = lambda: set()  # type: ignore[method-assign]
    app.flow_control.resume()  # as the recovery left it while reading the changelogs
    await app.tables.recovery.on_recovery_completed(generation_id=app.consumer_generation_id)
    assert plain.qsize() == 0, "Faust clears agent queues after the seek"
    assert [raw.queue.get_nowait() for _ in range(3)] == [5, 6, 7]


def test_raw_queue_empties_when_a_rebalance_starts_not_when_recovery_ends() -> None:
    flow = FlowControlEvent()
    queue = RawQueue(flow_control=flow, clear_on_resume=True)
    flow.resume()
    for offset in (1, 2, 3):
        queue.put_nowait(offset)
    flow.suspend()  # App._on_partitions_revoked: suspend, then clear stale records
    flow.clear()
    assert queue.qsize() == 0
    flow.resume()  # recovery resumes the flow while the changelogs are read
    queue.put_nowait(4)  # fetched after the seek to the committed offsets
    queue.put_nowait(5)
    flow.resume()  # and again when recovery is complete: these records stay
    assert [queue.get_nowait(), queue.get_nowait()] == [4, 5]


def test_a_recovery_completing_after_a_newer_rebalance_began_is_stale() -> None:
    app = faust.App("recovery-test", broker="kafka://localhost:1", web_enabled=False)
    assert not recovery_pending(app)
    app.tables.recovery.signal_recovery_start.set()  # Recovery.on_rebalance of a newer one
    assert recovery_pending(app)


class RewindFetcher:
    """What the seek to the committed offsets asks of aiokafka's fetcher."""

    _default_reset_strategy = OffsetResetStrategy.EARLIEST

    def __init__(self) -> None:
        self.seeks: dict[TopicPartition, int] = {}
        self.resets: list[tuple[set[TopicPartition], int]] = []

    def seek_to(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp] = offset

    def request_offset_reset(self, tps: list[TopicPartition], strategy: int) -> Any:
        self.resets.append((set(tps), strategy))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class CommittedConsumer:
    """An ``AIOKafkaConsumer`` as far as its own ``seek_to_committed`` reads it."""

    _request_timeout_ms = 1000

    def __init__(self, committed: dict[TopicPartition, int | None]) -> None:
        self._committed = committed
        self._fetcher = RewindFetcher()
        assignment = SimpleNamespace(unassign_future=asyncio.get_running_loop().create_future())
        self._subscription = SimpleNamespace(
            assigned_partitions=lambda: set(committed),
            subscription=SimpleNamespace(assignment=assignment),
        )

    async def committed(self, tp: TopicPartition) -> int | None:
        return self._committed[tp]

    seek_to_committed = AIOKafkaConsumer.seek_to_committed  # aiokafka's own


async def test_the_seek_back_to_committed_rewinds_partitions_nothing_was_committed_for() -> None:
    """Faust drops records fetched while its flow is stopped and seeks back to re-read them.

    aiokafka seeks only partitions with a committed offset above 0, so a partition
    without one stayed past the dropped records: the clean stop of one of two workers
    left its partitions (nothing committed yet) unprocessed on the other.
    """
    tps = [TopicPartition("events", p) for p in range(4)]
    consumer = CommittedConsumer({tps[0]: 12, tps[1]: None, tps[2]: 0, tps[3]: None})
    committed = await rewind_to_committed(consumer)
    assert committed == {tps[0]: 12, tps[1]: None, tps[2]: 0, tps[3]: None}
    assert consumer._fetcher.seeks == {tps[0]: 12, tps[2]: 0}
    assert consumer._fetcher.resets == [({tps[1], tps[3]}, OffsetResetStrategy.EARLIEST)]


async def test_single_key_changelogs_are_restored_from_their_last_record_alone() -> None:
    """Windows, models, merger: read from the last record; other changelogs from the start."""
    from faust.tables.recovery import Recovery

    recover_latest_only(["app-windows-changelog"])
    windows, fresh, clicks = (
        TP("app-windows-changelog", 0),
        TP("app-windows-changelog", 1),
        TP("app-clicks-changelog", 0),
    )

    class Earliest:
        async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
            return dict.fromkeys(tps, 0)

    recovery = SimpleNamespace(
        active_highwaters={windows: 2_600, fresh: 0, clicks: 9_000},
        log=SimpleNamespace(info=lambda *a, **k: None),
        _start_offsets_logtable=lambda offsets, title: "",
    )
    offsets: Counter[TP] = Counter({windows: None, fresh: None, clicks: None})
    await Recovery._build_offsets(recovery, Earliest(), {windows, fresh, clicks}, offsets, "active")
    # Faust seeks to the offset after the one given: the last record, the first one, the first one
    assert offsets == {windows: 2_599, fresh: -1, clicks: -1}
