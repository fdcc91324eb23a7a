"""The raw-message queue keeps what the fetcher put in it after the seek that ends recovery.

Issue 11: at the end of a recovery Faust resumes the stream partitions, seeks
them to their committed offsets with the flow already running (the fetcher
delivers meanwhile), and only then calls ``flow_control.resume()``, which clears
every agent queue. Records fetched during the seek were dropped, and the
consumer, having read their offsets, took the jump to the next record for an
acknowledged gap and committed past them.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.types import TP
from mode.utils.queues import FlowControlEvent

from stream.kafka.faust_internals import RawQueue, message_topic, recovery_pending


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
