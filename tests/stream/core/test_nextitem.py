"""Unit tests for stream.core.nextitem: the next-item quality protocol."""

from __future__ import annotations

from stream.core.browsing import BrowseSim
from stream.core.nextitem import next_item_quality, partition_of


def sim_events(users: int) -> list[tuple[str, str, str, int]]:
    out = []
    for e in BrowseSim(users=users, seed=4).events():
        item = e.get("item_id") or e["items"][0]["item_id"]
        out.append((e["user_id"], item, e["type"], e["event_time"]))
    return out


def test_pulse_beats_session_popularity_on_the_simulator() -> None:
    q = next_item_quality(sim_events(200))
    assert q["cases"] > 1000
    assert q["Pulse"][0] > q["S-POP"][0] > q["POP"][0]
    assert q["Pulse"][1] > q["S-POP"][1]


def test_only_later_events_of_a_session_are_cases() -> None:
    events = [("u", "a", "view", 0), ("u", "b", "view", 10 * 60_000), ("u", "c", "view", 3_600_000)]
    assert next_item_quality(events)["cases"] == 1  # c comes after a 30 min gap: a new session


def test_partitions_split_users_stably() -> None:
    assert partition_of("u1", 4) == partition_of("u1", 4)
    q = next_item_quality(sim_events(100), partitions=4)
    assert len(q["recommenders"]) == 4 and all(r.users for r in q["recommenders"])
