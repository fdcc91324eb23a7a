"""After a rebalance: which partition state is restored from the changelogs, which stays.

A worker's agents see one interleaving that lost counts (issue 11): a batch
processed while recovery was still running, then the window state replaced
wholesale by older changelog data. Partitions owned through a rebalance now
keep their state in memory; only newly assigned ones are read back.
"""

from __future__ import annotations

import asyncio

from agents.ingest import IngestAgent
from stream.runtime import Runtime
from tests.agents.conftest import T0, event


def views(partition: int, n: int, first: int = 0) -> list:
    return [
        (b"u1", event(f"p{partition}-{i}", at=T0 + i), partition, i, T0)
        for i in range(first, first + n)
    ]


def open_views(rt: Runtime, partition: int) -> int:
    pw = rt.stage.windows[partition]
    return sum(row[0] for rows in pw.open.values() for row in rows.values())


def test_a_kept_partition_keeps_counts_newer_than_its_last_snapshot(rt: Runtime) -> None:
    agent = IngestAgent(rt)
    agent.handle(views(0, 3) + views(1, 2), T0)
    snapshot = {str(p): rt.stage.window_state(p).to_state() for p in (0, 1)}
    agent.handle(views(0, 4, first=3), T0)  # processed after that snapshot
    assert open_views(rt, 0) == 7
    changelog = {**snapshot, "2": snapshot["1"]}  # partition 2 comes from another worker
    restored = agent.restore_windows({0, 2}, changelog.items(), [], [], keep={0, 1})
    assert restored == {2}
    assert open_views(rt, 0) == 7, "owned throughout: the newer state in memory stays"
    assert open_views(rt, 2) == 2 and rt.stage.windows[2].last_offset == 1
    assert 1 not in rt.stage.windows, "revoked: its state goes to the new owner"


def test_without_keep_every_owned_partition_is_read_back(rt: Runtime) -> None:
    agent = IngestAgent(rt)
    agent.handle(views(0, 3), T0)
    snapshot = {"0": rt.stage.window_state(0).to_state()}
    agent.handle(views(0, 2, first=3), T0)
    assert agent.restore_windows({0}, snapshot.items(), [], []) == {0}  # a fresh worker
    assert open_views(rt, 0) == 3 and rt.stage.windows[0].last_offset == 2


async def test_a_new_generation_waits_for_the_batch_in_progress(rt: Runtime) -> None:
    order: list[str] = []

    async def batch() -> None:
        async with rt.lock:
            await asyncio.sleep(0.05)
            order.append("batch done")

    task = asyncio.create_task(batch())
    await asyncio.sleep(0)
    generation = await rt.new_generation()
    order.append("generation bumped")
    await task
    assert order == ["batch done", "generation bumped"] and generation == 1
    assert not rt.state_current
    rt.restored_generation = rt.generation
    assert rt.state_current
