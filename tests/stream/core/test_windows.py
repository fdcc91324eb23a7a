"""Event-time windows: counts, lateness and attribution, whatever the batch boundaries."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from stream.core.attribution import MODELS
from stream.core.fx import FxRates
from stream.core.windows import SWEEPS_PER_TTL, PartitionWindows, Row, RowKey

SIZE, GRACE, ATTRIBUTION = 60_000, 10_000, 3_600_000


def run(
    events: list[dict[str, Any]], cuts: set[int], pw: PartitionWindows | None = None
) -> tuple[dict[Any, Row], list[int]]:
    """Add events in order, closing windows at each cut (a batch end); then close all."""
    pw = pw or PartitionWindows(SIZE, GRACE, ATTRIBUTION)
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
    # no fx: summed as sent; every model credits the one click
    credit = {m: [1.0, 5.0] for m in MODELS}
    steps = {"campaign:(start)": 1, "channel:(start)": 1, "conversion": 1, "value": 5.0}
    assert pw.open[0][key] == [0, 1, 1, 5.0, 0, {}, {"": 5.0}, credit, steps]


# --- last clicks: bounded in event time, and forgetting them changes no count ---


class NeverExpires(PartitionWindows):
    def expire_clicks(self) -> int:
        return 0


def purchase(ts: int, user: str) -> dict[str, Any]:
    return {"type": "purchase", "ts": ts, "channel": "web", "user_id": user, "revenue": 1}


def attributed(ts: int, etype: str, campaign: str, user: str) -> dict[str, Any]:
    if etype == "purchase":
        return purchase(ts, user)
    return {**event(ts, etype, campaign), "user_id": user}


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.builds(
            attributed,
            st.integers(0, 8 * SIZE),
            st.sampled_from(["click", "purchase", "purchase"]),
            st.sampled_from(["c1", "c2"]),
            st.sampled_from(["a", "b"]),
        ),
        max_size=60,
    ),
    st.sets(st.integers(0, 60)),
)
@example(  # a's click was forgotten at the close before its purchase, 10 s out of order
    [
        attributed(0, "click", "c1", "a"),
        attributed(125_000, "click", "c1", "b"),
        purchase(110_000, "a"),
    ],
    {2},
)
def test_forgetting_clicks_changes_no_attribution(
    events: list[dict[str, Any]], cuts: set[int]
) -> None:
    # a short attribution window so sweeps happen; out-of-order purchases within grace
    def windows(cls: type[PartitionWindows]) -> PartitionWindows:
        return cls(SIZE, GRACE, 2 * SIZE)

    assert run(events, cuts, windows(PartitionWindows)) == run(events, set(), windows(NeverExpires))


def test_last_clicks_are_bounded_and_recent_ones_kept() -> None:
    attribution = 10 * SIZE
    pw = PartitionWindows(SIZE, GRACE, attribution)
    clicked: dict[str, int] = {}
    period = attribution // SWEEPS_PER_TTL
    for i in range(5 * attribution // 1_000):  # a new clicking user every second
        ts, user = i * 1_000, f"u{i}"
        pw.add({**event(ts, "click"), "user_id": user})
        clicked[user] = ts
        if i % 100 == 99:  # a batch end
            pw.close()
            bound = sum(1 for t in clicked.values() if ts - t <= pw.click_ttl_ms + period)
            assert len(pw.last_click) <= bound
    assert len(pw.last_click) < len(clicked) // 3
    assert {u for u, _ in pw.drain_clicks()} == set(clicked)  # forgotten ones: tombstones
    ts = pw.max_ts
    recent = f"u{ts // 1_000 - attribution // 1_000 + 1}"  # clicked within the window
    assert pw.add(purchase(ts, recent)) == ("c", "", "web")


def test_restored_clicks_are_swept_at_the_next_close() -> None:
    pw = PartitionWindows.from_state(
        {"max_ts": 10 * ATTRIBUTION, "closed_until": 0, "last_offset": 5, "open": {}},
        SIZE,
        GRACE,
        ATTRIBUTION,
    )
    pw.restore_clicks([("old", [0, "c", "", "web"]), ("new", [10 * ATTRIBUTION, "c", "", "web"])])
    pw.close()
    assert set(pw.last_click) == {"new"}


def test_add_to_cart_counts_as_a_cart_of_its_campaign() -> None:
    pw = PartitionWindows(SIZE, GRACE, ATTRIBUTION)
    key = pw.add({**event(1_000, "add_to_cart"), "item_id": "sku-9"})
    assert key == ("c", "", "web") and pw.open[0][key] == [0, 0, 0, 0.0, 1, {}, {}, {}, {}]


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ({"type": "view", "item_id": "sku-9"}, "item"),
        ({"type": "click", "item_id": "sku-9"}, "item"),
        ({"type": "add_to_cart", "item_id": "sku-9"}, "item"),
        ({"type": "identify", "anonymous_id": "a"}, "identify"),
    ],
)
def test_events_outside_any_campaign_count_in_no_window_and_are_never_late(
    extra: dict[str, Any], status: str
) -> None:
    pw = PartitionWindows(SIZE, GRACE, ATTRIBUTION)
    pw.add(event(0))
    pw.add(event(10 * SIZE))
    assert pw.close()  # the first window is closed: a campaign event in it is late
    assert pw.add(event(1)) == "late"
    late = {"ts": 0, "channel": "web", "user_id": "u", **extra}
    assert pw.add(late) == status
    assert pw.add({**late, "ts": 11 * SIZE}) == status
    assert pw.max_ts == 11 * SIZE  # they move event time on
    assert all(key[0] == "c" for rows in pw.open.values() for key in rows)
    assert "u" not in pw.last_click  # an item click is no campaign touch


def test_state_of_a_release_without_carts_is_read() -> None:
    old = {
        "max_ts": 5,
        "closed_until": 0,
        "last_offset": 3,
        "open": {"0": [["c", "", "web", 2, 1, 0, 0.0]]},
    }
    pw = PartitionWindows.from_state(old, SIZE, GRACE, ATTRIBUTION)
    assert pw.open == {0: {("c", "", "web"): [2, 1, 0, 0.0, 0, {}, {}, {}, {}]}}
    pw.add(event(1, "add_to_cart"))
    assert pw.to_state()["open"]["0"] == [["c", "", "web", 2, 1, 0, 0.0, 1, {}, {}, {}, {}]]


def test_purchases_convert_at_their_event_time_and_without_a_rate_stay_out_of_revenue() -> None:
    fx = FxRates("USD")
    fx.set("EUR", 1.10, valid_from=0)
    fx.set("EUR", 1.20, valid_from=30_000)
    pw = PartitionWindows(SIZE, GRACE, ATTRIBUTION, fx)
    buys = [
        (10_000, 10.0, "EUR"),
        (40_000, 10.0, "eur"),
        (41_000, 4.0, "USD"),
        (42_000, 7.0, "JPY"),
    ]
    for ts, amount, currency in buys:
        e = {"type": "purchase", "ts": ts, "campaign_id": "c", "channel": "web",
             "user_id": "u", "revenue": amount, "currency": currency}  # fmt: skip
        pw.add(e)
        assert e["revenue_reporting"] == (None if currency == "JPY" else pytest.approx(
            {10_000: 11.0, 40_000: 12.0, 41_000: 4.0}[ts]))  # fmt: skip
    row = pw.open[0][("c", "", "web")]
    assert row[2] == 4 and row[3] == pytest.approx(27.0)
    assert row[5] == {"JPY": 1} and row[6] == {"EUR": 20.0, "USD": 4.0, "JPY": 7.0}


def test_a_purchase_is_credited_over_the_users_touches_per_model() -> None:
    pw = PartitionWindows(SIZE, GRACE, attribution_ms=3_600_000, half_life_ms=60_000)
    for ts, cid in (
        (1_000, "search"),
        (61_000, "email"),
        (121_000, "social"),
        (115_000, "display"),
    ):
        pw.add({"type": "click", "ts": ts, "campaign_id": cid, "channel": "web", "user_id": "u"})
    # the click at 115 s arrived last but within grace: an earlier touch, not the last click
    assert [t[1] for t in pw.touches("u", 181_000)] == ["search", "email", "display", "social"]
    buy = {"type": "purchase", "ts": 181_000, "user_id": "u", "channel": "web", "revenue": 10.0}
    assert pw.add(buy) == ("social", "", "web")  # counted on the last click, as before
    credit = {k[0]: row[7] for k, row in pw.open[180_000].items()}
    assert credit["social"]["last_click"] == [1.0, 10.0]
    assert "last_click" not in credit["search"]
    assert credit["search"]["first_click"] == [1.0, 10.0]
    for cid in ("search", "email", "display", "social"):
        assert credit[cid]["linear"] == pytest.approx([0.25, 2.5])
    assert credit["search"]["position"] == pytest.approx([0.4, 4.0])
    assert credit["display"]["position"] == pytest.approx([0.1, 1.0])
    # ages 180, 120, 66 and 60 s at a 60 s half-life
    raw = {"search": 0.5**3, "email": 0.5**2, "display": 0.5**1.1, "social": 0.5}
    total = sum(raw.values())
    for cid, w in raw.items():
        assert credit[cid]["time_decay"] == pytest.approx([w / total, 10 * w / total])
    assert sum(c[m][0] for c in credit.values() for m in c) == pytest.approx(len(MODELS))


def test_touches_survive_the_changelog_and_expire_with_the_attribution_window() -> None:
    pw = PartitionWindows(SIZE, GRACE, attribution_ms=100_000)
    for ts, cid in ((0, "a"), (50_000, "b"), (90_000, "c")):
        pw.add({"type": "click", "ts": ts, "campaign_id": cid, "channel": "web", "user_id": "u"})
    ((user, record),) = pw.drain_clicks()
    assert record is not None and record[4] == [[0, "a", "", "web"], [50_000, "b", "", "web"]]
    twin = PartitionWindows(SIZE, GRACE, attribution_ms=100_000)
    twin.restore_clicks([(user, [*record[:4], 2, record[4]])])  # as the changelog stores it
    assert twin.touches("u", 90_000) == pw.touches("u", 90_000)
    twin.restore_clicks([("v", [5, "x", "", "web", 2])])  # a record of an earlier release
    assert twin.touches("v", 5) == [(5, "x", "", "web")]
    # click TTL: attribution + grace + size = 170 s behind the newest event
    pw.max_ts = 200_000
    pw.expire_clicks()
    assert pw.earlier == {"u": [(50_000, "b", "", "web")]} and "u" in pw.last_click
    pw.max_ts = 400_000
    pw.expire_clicks()
    assert pw.earlier == {} and pw.last_click == {}


def test_a_batch_replayed_over_restored_clicks_credits_as_the_first_run() -> None:
    batch = [
        {"type": "click", "ts": 1_000, "campaign_id": "a", "channel": "web", "user_id": "u"},
        {"type": "click", "ts": 2_000, "campaign_id": "b", "channel": "web", "user_id": "u"},
        {"type": "purchase", "ts": 3_000, "user_id": "u", "channel": "web", "revenue": 8.0},
        {"type": "click", "ts": 4_000, "campaign_id": "c", "channel": "web", "user_id": "u"},
    ]
    first = PartitionWindows(SIZE, GRACE, ATTRIBUTION)
    for e in batch:
        first.add(dict(e))
    # a crash after the clicks changelog was written, before the window snapshot
    ((user, record),) = first.drain_clicks()
    assert record is not None
    replay = PartitionWindows(SIZE, GRACE, ATTRIBUTION)
    replay.restore_clicks([(user, [*record[:4], 0, record[4]])])
    for e in batch:
        replay.add(dict(e))
    assert replay.open == first.open  # the purchase on b, linear credit a and b, not c
    assert replay.touches("u", 4_000) == first.touches("u", 4_000)  # no touch twice
    assert first.open[0][("b", "", "web")][2] == 1


# --- journey steps: the Markov chain's data ---


def steps_of(pw: PartitionWindows) -> dict[str, dict[str, float]]:
    """Each campaign's steps over the open windows (rows summed)."""
    out: dict[str, dict[str, float]] = {}
    for rows in pw.open.values():
        for key, row in rows.items():
            acc = out.setdefault(key[0], {})
            for step, n in row[8].items():
                acc[step] = acc.get(step, 0) + n
    return out


def click(ts: int, cid: str, user: str = "u", channel: str = "web") -> dict[str, Any]:
    return {"type": "click", "ts": ts, "campaign_id": cid, "channel": channel, "user_id": user}


def buy(ts: int, user: str = "u", revenue: float = 10.0) -> dict[str, Any]:
    return {"type": "purchase", "ts": ts, "user_id": user, "channel": "web", "revenue": revenue}


def test_journey_steps_start_again_after_a_purchase_and_outside_the_window() -> None:
    pw = PartitionWindows(SIZE, GRACE, ATTRIBUTION)
    for e in (
        click(1_000, "a", channel="email"),
        click(2_000, "b"),
        buy(3_000),  # ends the journey a > b at b
        buy(3_500),  # no click since: no journey's end
        click(4_000, "a"),  # a new journey
        click(4_000 + ATTRIBUTION + 1, "b"),  # its previous click is too old: new again
    ):
        pw.add(e)
    assert steps_of(pw) == {
        "a": {"campaign:(start)": 2, "channel:(start)": 2},
        "b": {
            "campaign:a": 1,
            "channel:email": 1,
            "campaign:(start)": 1,
            "channel:(start)": 1,
            "conversion": 1,
            "value": 10.0,
        },
    }


def test_journey_steps_of_a_replay_over_restored_clicks_are_the_first_runs() -> None:
    events = [click(1_000, "a"), click(2_000, "b"), buy(3_000), click(4_000, "c"), buy(5_000)]
    first = PartitionWindows(SIZE, GRACE, ATTRIBUTION)
    for e in events:
        first.add(e)
    replay = PartitionWindows(SIZE, GRACE, ATTRIBUTION)
    replay.restore_clicks([(u, [*c[:4], 0, *c[4:]]) for u, c in first.drain_clicks() if c])
    for e in events:  # the clicks table was written after the whole batch, then a crash
        replay.add({**e})
    assert steps_of(replay) == steps_of(first)
    assert steps_of(first)["b"]["conversion"] == 1 and steps_of(first)["c"]["conversion"] == 1
    assert steps_of(first)["c"]["campaign:(start)"] == 1  # after a purchase: a new journey


def test_views_are_touches_only_when_asked() -> None:
    seen = {"type": "view", "ts": 1_000, "campaign_id": "c", "channel": "email", "user_id": "u"}
    for views_touch, want in ((False, "unattributed"), (True, ("c", "", "email"))):
        pw = PartitionWindows(SIZE, GRACE, ATTRIBUTION, views_touch=views_touch)
        pw.add(seen)
        assert pw.add(buy(2_000)) == want
    assert steps_of(pw)["c"]["campaign:(start)"] == 1  # the view began the journey
    restored = PartitionWindows.from_state(pw.to_state(), SIZE, GRACE, ATTRIBUTION, None, 1.0, True)
    assert restored.touch_types == ("click", "view")
