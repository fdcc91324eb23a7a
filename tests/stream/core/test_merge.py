"""The merger across a crash between emitting and snapshotting: nothing sent twice, nothing lost."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from stream.core.bandit import Allocator
from stream.core.merge import EmittedOutputs, WindowMerger, decode_windows
from stream.core.pipeline import MergeStage, Partial
from stream.core.triggers import TriggerEngine, load_rules

SIZE = 10_000
WINDOWS = 12
DROP_FROM = 8


def new_stage(state: dict[str, Any] | None = None) -> MergeStage:
    """As the worker builds it: from a JSON snapshot read back from the changelog."""
    engine, allocator = TriggerEngine(load_rules(None)), Allocator()
    if state is None:
        return MergeStage(WindowMerger(2, SIZE), engine, lambda _: None, allocator)
    engine.restore(state["engine"])
    allocator.restore(state["allocator"])
    merger = WindowMerger.from_state(state, 2, SIZE)
    return MergeStage(merger, engine, lambda _: None, allocator)


def snapshot(stage: MergeStage) -> dict[str, Any]:
    return orjson.loads(orjson.dumps(stage.to_state()))


def partials() -> list[list[Partial]]:
    """One step per window: each partition closes it with half the views and clicks."""
    steps = []
    for w in range(WINDOWS):
        clicks = 1 if w >= DROP_FROM else 9
        rows = {("c-drop", "A", "web"): [300, clicks, 0, 0.0], ("c2", "", "email"): [50, 2, 1, 5.0]}
        steps.append(
            [
                (p, (w + 1) * SIZE, [(w * SIZE, {k: list(v) for k, v in rows.items()})])
                for p in (0, 1)
            ]
        )
    return steps


def outputs(out: Any) -> list[tuple[Any, ...]]:
    return [EmittedOutputs.record_key(r) for r in out.records] + [
        ("t", t["trigger_id"]) for t in out.triggers
    ]


def run_straight() -> list[tuple[Any, ...]]:
    stage = new_stage()
    sent = []
    for step in partials():
        sent += outputs(stage.add(step, 0))
    return sent


@pytest.mark.parametrize("crash_at", [0, 3, DROP_FROM, WINDOWS - 1])
@pytest.mark.parametrize("split_replay", [False, True])
def test_crash_between_emit_and_snapshot_sends_each_output_once(
    crash_at: int, split_replay: bool
) -> None:
    expected = run_straight()
    assert any(k[0] == "t" for k in expected)  # the CTR drop fires a trigger

    steps = partials()
    stage = new_stage()
    sent: list[tuple[Any, ...]] = []
    state = None
    for i, step in enumerate(steps[: crash_at + 1]):
        out = stage.add(step, 0)
        sent += outputs(out)
        if i < crash_at:
            state = snapshot(stage)  # the crash comes after emitting step crash_at
    lost_step_out = out

    restored = new_stage(state)
    restored.emitted.learn(
        lost_step_out.records, lost_step_out.triggers, restored.merger.emitted_until
    )
    assert len(restored.emitted) == len(outputs(lost_step_out))
    replay = steps[crash_at:]
    if split_replay:  # the replay may read the partials in other batches
        replay = [[p] for step in replay for p in step]
    for step in replay:
        sent += outputs(restored.add(step, 0))
    assert sent == expected
    assert restored.emitted.dropped == len(outputs(lost_step_out))
    assert not restored.emitted  # forgotten once past the learned windows


def test_learn_ignores_outputs_the_snapshot_already_covers() -> None:
    e = EmittedOutputs()
    rec = {"campaign_id": "c", "variant_id": None, "channel": "web", "window_start": 0}
    trig = {"trigger_id": "t1", "action": "campaign.pause", "evidence": {"window_end": 10}}
    offer = {"trigger_id": "t2", "action": "user.send_offer", "evidence": {}}
    e.learn([{**rec, "window_end": 10}], [trig, offer], emitted_until=10)
    assert not e
    e.learn([{**rec, "window_end": 10}], [trig, offer], emitted_until=0)
    assert e.keys == {("m", "c", None, "web", 0), ("t", "t1")}


def test_partials_of_a_release_without_carts_merge_with_new_ones() -> None:
    m = WindowMerger(partitions=2, size_ms=10)
    m.add_partial(0, 10, decode_windows([[0, [["c", "", "web", 2, 1, 0, 0.0]]]]))
    m.add_partial(1, 10, [(0, {("c", "", "web"): [1, 0, 0, 0.0, 3]})])
    assert m.ready() == [(0, {("c", "", "web"): [3, 1, 0, 0.0, 3, {}, {}, {}, {}]})]
