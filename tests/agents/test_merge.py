"""MergeAgent.handle: partials in, window records, triggers and the snapshot out."""

from __future__ import annotations

import orjson

from agents.ingest import IngestAgent
from agents.merge import READ_BACK_MARGIN_MS, MergeAgent
from stream.runtime import Runtime
from tests.agents.conftest import T0, event, sent


def partials_of(rt: Runtime, batches: list[list[tuple]]) -> list[tuple[int, bytes]]:
    """Run ingest batches and collect their partials as (offset, value) on the partials topic."""
    ingest, out = IngestAgent(rt), []
    for batch in batches:
        result = ingest.handle(batch, now_ms=T0)
        out += [v for _, _, v in sent(result.sends, "pulse.metrics.partials")]
    return list(enumerate(out))


def closing_batches() -> list[list[tuple]]:
    past = T0 + 70_000
    batches = []
    for p in range(4):  # every source partition must pass the window for the merger
        batches.append(
            [(b"u", event(f"v{p}-{i}", at=T0 + i, campaign="c1"), p, i, T0) for i in range(p + 1)]
        )
        batches.append([(b"u", event(f"x{p}", at=past, campaign="c2"), p, 100, past)])
    return batches


def test_partials_become_one_record_per_window_then_the_snapshot(rt: Runtime) -> None:
    partials = partials_of(rt, closing_batches())
    agent = MergeAgent(rt)
    result = agent.handle(partials, now_ms=T0 + 80_000)
    (record,) = [orjson.loads(v) for _, _, v in sent(result.outputs, "pulse.metrics")]
    assert (record["campaign_id"], record["window_start"], record["views"]) == ("c1", T0, 10)
    assert result.snapshot is not None and result.snapshot.topic == "pulse-merger-changelog"
    state = orjson.loads(result.snapshot.by_partition[0][0][1])  # type: ignore[arg-type]
    assert state["last_offset"] == len(partials) - 1 and state["written_at"] == T0 + 80_000


def test_partials_merged_before_are_skipped(rt: Runtime) -> None:
    partials = partials_of(rt, closing_batches())
    agent = MergeAgent(rt)
    agent.handle(partials, now_ms=T0 + 80_000)
    again = agent.handle(partials, now_ms=T0 + 90_000)
    assert again.outputs == [] and again.merged.records == []


def test_a_replay_after_a_crash_drops_what_was_already_sent(rt: Runtime) -> None:
    partials = partials_of(rt, closing_batches())
    first = MergeAgent(rt).handle(partials, now_ms=T0 + 80_000)
    emitted = [orjson.loads(v) for _, _, v in sent(first.outputs, "pulse.metrics")]
    rt.merge = rt.new_merge_stage()  # killed before the snapshot: a fresh stage replays
    agent = MergeAgent(rt)
    since, marker = agent.read_back_since(rt.merge, None)
    assert marker is not None  # first run of this stage: the start is marked
    written = orjson.loads(marker.by_partition[0][0][1])["written_at"]  # type: ignore[arg-type]
    assert since == written - READ_BACK_MARGIN_MS
    agent.learn(rt.merge, emitted, [])
    replay = agent.handle(partials, now_ms=T0 + 90_000)
    assert replay.outputs == [] and rt.merge.emitted.dropped == len(emitted)


def test_unreadable_partials_are_skipped_and_counted_as_merged(rt: Runtime) -> None:
    agent = MergeAgent(rt)
    result = agent.handle([(0, b"{oops"), (1, b'{"partition": 0}')], now_ms=T0)
    assert result.outputs == [] and rt.merge.merger.last_offset == 1
