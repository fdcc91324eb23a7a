"""Event-time windows: counts, lateness and attribution, whatever the batch boundaries."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.windows import PartitionWindows, Row, RowKey

SIZE, GRACE, ATTRIBUTION = 60_000, 10_000, 3_600_000


def run(events: list[dict[str, Any]], cuts: set[int]) -> tuple[dict[Any, Row], list[int]]:
    """Add events in order, closing windows at each cut (a batch end); then close all."""
    pw = PartitionWindows(SIZE, GRACE, ATTRIBUTION)
    rows: dict[tuple[int, RowKey], Row] = {}
    late = []

    def collect(closed: list[tuple[int, dict[RowKey, Row]]]) -> None:
        for ws, window in closed:
            for key, row in window.items():
                assert (ws, key) not in rows, "a window was closed twice"
                rows[(ws, key)] = row

    for i, event in enumerate(events):
        if i in cuts:
            collect(pw.close())
        if pw.add(event) == "late":
            late.append(i)
    collect(pw.close(watermark=10**15))
    return rows, late


def event(ts: int, etype: str = "view", campaign: str = "c") -> dict[str, Any]:
    return {"type": etype, "ts": ts, "campaign_id": campaign, "channel": "web", "user_id": "u"}


events_st = st.lists(
    st.builds(
        event,
        st.integers(0, 6 * SIZE),
        st.sampled_from(["view", "click"]),
        st.sampled_from(["c1", "c2"]),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(events_st, st.sets(st.integers(0, 60)))
def test_batch_boundaries_change_nothing(events: list[dict[str, Any]], cuts: set[int]) -> None:
    assert run(events, cuts) == run(events, set())


@settings(max_examples=200, deadline=None)
@given(events_st)
def test_every_event_is_counted_or_late(events: list[dict[str, Any]]) -> None:
    rows, late = run(events, set(range(0, 60, 7)))
    counted = sum(r[0] + r[1] for r in rows.values())
    assert counted + len(late) == len(events)
    for i in late:  # late means: its window ended before the watermark at that point
        ts = events[i]["ts"]
        max_before = max((e["ts"] for e in events[:i]), default=-1)
        assert ts - ts % SIZE + SIZE <= max_before - GRACE


def test_out_of_order_within_grace_is_counted() -> None:
    rows, late = run([event(59_000), event(65_000), event(58_000)], {1, 2})
    assert late == []
    assert rows[(0, ("c", "", "web"))][0] == 2


def test_purchase_without_campaign_takes_the_last_click() -> None:
    pw = PartitionWindows(SIZE, GRACE, ATTRIBUTION)
    pw.add(event(1_000, "click", "spring"))
    key = pw.add({"type": "purchase", "ts": 2_000, "user_id": "u", "channel": "web", "revenue": 5})
    assert key == ("spring", "", "web")
    assert pw.open[0][key] == [0, 1, 1, 5.0]
