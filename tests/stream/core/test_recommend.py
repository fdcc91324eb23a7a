"""Unit tests for stream.core.recommend: learning, scoring, bounds, erase and checkpoints."""

from __future__ import annotations

from stream.core import plainstate
from stream.core.browsing import BrowseSim
from stream.core.recommend import Recommender

MIN = 60_000


def feed(rec: Recommender, sessions: list[tuple[str, list[str]]], start: int = 0) -> int:
    t = start
    for user, items in sessions:
        for item in items:
            rec.observe(user, item, "view", t)
            t += MIN
        t += 60 * MIN
    return t


def test_sequential_neighbours_rank_the_following_item_first() -> None:
    rec = Recommender()
    t = feed(rec, [(f"u{n}", ["phone", "case", "charger"]) for n in range(5)])
    rec.observe("new", "phone", "view", t)
    items, policy = rec.recommend("new", 3)
    assert policy == "session-knn" and [i for i, _ in items][:2] == ["case", "phone"]
    assert items == sorted(items, key=lambda kv: -kv[1])


def test_cold_user_gets_popularity_and_filters_apply() -> None:
    rec = Recommender()
    t = feed(rec, [("a", ["x", "y"]), ("b", ["x"]), ("c", ["x", "z"])])
    items, policy = rec.recommend("nobody", 2)
    assert policy == "popular" and items[0][0] == "x"
    rec.observe("d", "y", "view", t, campaign="summer")
    assert [i for i, _ in rec.recommend("d", 5, campaign="summer")[0]] == ["y"]
    assert "y" not in [i for i, _ in rec.recommend("d", 5, exclude_seen=True)[0]]


def test_kinds_weigh_differently_and_purchase_items_count() -> None:
    rec = Recommender()
    rec.observe("u", "viewed", "view", 0)
    rec.observe_event("u", {"type": "purchase", "ts": 0, "items": [{"item_id": "bought"}]})
    assert rec.pop["bought"] == 4 * rec.pop["viewed"]


def test_state_is_bounded() -> None:
    rec = Recommender(neighbours=3, history=4, max_items=40, user_ttl_ms=10 * MIN)
    feed(rec, [(f"u{n}", [f"i{(n * 7 + k) % 60}" for k in range(10)]) for n in range(30)])
    assert len(rec.pop) <= 40
    assert all(len(row) <= 6 for row in rec.co.values())
    assert all(len(ev) <= 4 for ev in rec.users.values())
    assert len(rec.users) < 30  # idle users were swept
    items, users = rec.state_bytes()
    assert items > 0 and users > 0


def test_decay_keeps_relative_order_and_rescales() -> None:
    rec = Recommender(half_life_ms=MIN)
    rec.observe("a", "old", "view", 0)
    rec.observe("b", "new", "view", 1_000 * MIN)  # 1000 half-lives later: rescaled
    assert rec.base == 1_000 * MIN and rec.pop["new"] == 1.0 and rec.pop["old"] < 1e-100


def test_erase_takes_back_contributions() -> None:
    rec = Recommender()
    t = feed(rec, [("keep", ["a", "b"])])
    before = ({i: round(v, 9) for i, v in rec.pop.items()}, {a: dict(r) for a, r in rec.co.items()})
    feed(rec, [("gone", ["a", "c", "b"])], t)
    assert rec.erase_user("gone") and not rec.erase_user("gone")
    assert {i: round(v, 9) for i, v in rec.pop.items()} == before[0]
    assert {a: {b: round(v, 9) for b, v in r.items()} for a, r in rec.co.items() if r} == {
        a: {b: round(v, 9) for b, v in r.items()} for a, r in before[1].items()
    }
    assert rec.recommend("gone", 3)[1] == "popular"


def test_checkpoint_round_trip_scores_the_same() -> None:
    sim = BrowseSim(users=40, seed=3)
    rec = Recommender()
    for e in sim.events():
        rec.observe_event(e["user_id"], {**e, "ts": e["event_time"]})
    twin = Recommender()
    twin.load_state(plainstate.loads(plainstate.dumps(rec.to_state())))
    for user in list(rec.users)[:10]:
        assert twin.recommend(user, 20) == rec.recommend(user, 20)
    assert plainstate.dumps(twin.to_state()) == plainstate.dumps(rec.to_state())


def test_state_that_decays_below_the_smallest_float_is_forgotten() -> None:
    rec = Recommender(half_life_ms=MIN)
    feed(rec, [("a", ["x", "y"])])
    rec.observe("b", "x", "view", 2_000 * MIN)  # y and the pair decayed to nothing
    assert "y" not in rec.pop and rec.recommend("b", 5)[0][0][0] == "x"
