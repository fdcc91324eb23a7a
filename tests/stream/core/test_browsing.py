"""Unit tests for stream.core.browsing: the shopper simulator and its truth."""

from __future__ import annotations

import pytest

from stream.core.browsing import BrowseSim
from stream.core.recommend import Recommender
from stream.core.validation import Rejection, check_event


def test_events_are_valid_ordered_and_deterministic() -> None:
    a, b = BrowseSim(users=30, seed=5).events(), BrowseSim(users=30, seed=5).events()
    assert a == b and a == sorted(a, key=lambda e: e["event_time"])
    checked = [check_event(e, e["event_time"]) for e in a]
    assert not [c for c in checked if isinstance(c, Rejection)]
    assert {e["type"] for e in a} == {"view", "click", "add_to_cart", "purchase"}


def test_truth_follows_the_sequence_and_the_learner_finds_it() -> None:
    sim = BrowseSim(users=300, seed=2)
    rec = Recommender()
    for e in sim.events():
        rec.observe_event(e["user_id"], {**e, "ts": e["event_time"]})
    last = sim.state["shopper-00001"][2]
    assert sim.top("shopper-00001", 1) == [sim.item_id(sim.successor(last))]
    found = []
    for user in sorted(sim.state)[:20]:
        top20 = {i for i, _ in rec.recommend(user, 20)[0]}
        found.append(len(top20 & set(sim.top(user, 5))))
    assert sum(found) / len(found) >= 3


def test_bad_catalog_is_refused() -> None:
    with pytest.raises(ValueError, match="multiple of category_size"):
        BrowseSim(items=30, category_size=20)
