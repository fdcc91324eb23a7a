"""Unit tests for stream.core.dedup: TTL, redelivery, expiry, tombstones and restore."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core.dedup import Deduplicator

TTL = 1_000

# A step is (event_id, partition, offset, now_ms, expected is_duplicate result).
Step = tuple[str, int, int, int, bool]

SEQUENCES: dict[str, list[Step]] = {
    "first sighting": [("e1", 0, 0, 0, False)],
    "repeat within ttl at another offset": [
        ("e1", 0, 0, 0, False),
        ("e1", 0, 1, 10, True),
    ],
    "repeat just before ttl": [
        ("e1", 0, 0, 0, False),
        ("e1", 0, 1, TTL - 1, True),
    ],
    "repeat exactly at ttl is new": [
        ("e1", 0, 0, 0, False),
        ("e1", 0, 1, TTL, False),
    ],
    "repeat long after ttl is new": [
        ("e1", 0, 0, 0, False),
        ("e1", 0, 1, 50 * TTL, False),
    ],
    "repeat from another partition within ttl": [
        ("e1", 0, 0, 0, False),
        ("e1", 1, 0, 10, True),
    ],
    "same offset on another partition is a duplicate": [
        ("e1", 0, 5, 0, False),
        ("e1", 1, 5, 10, True),
    ],
    "redelivery of the same partition and offset": [
        ("e1", 0, 5, 0, False),
        ("e1", 0, 5, 20, False),
    ],
    "redelivery repeated, then a real duplicate": [
        ("e1", 0, 5, 0, False),
        ("e1", 0, 5, 20, False),
        ("e1", 0, 5, 30, False),
        ("e1", 0, 6, 40, True),
    ],
    "distinct ids are independent": [
        ("e1", 0, 0, 0, False),
        ("e2", 0, 1, 1, False),
        ("e1", 0, 2, 2, True),
        ("e2", 1, 0, 3, True),
    ],
    "window counts from the first sighting, not the last repeat": [
        ("e1", 0, 0, 0, False),
        ("e1", 0, 1, 900, True),
        ("e1", 0, 2, TTL, False),
        ("e1", 0, 3, TTL + 999, True),
        ("e1", 0, 4, 2 * TTL, False),
    ],
}


@pytest.mark.parametrize("steps", list(SEQUENCES.values()), ids=list(SEQUENCES))
def test_is_duplicate_sequences(steps: list[Step]) -> None:
    d = Deduplicator({}, ttl_ms=TTL)
    got = [d.is_duplicate(eid, partition=p, offset=o, now_ms=t) for eid, p, o, t, _ in steps]
    assert got == [expected for *_, expected in steps]


def test_first_sighting_stores_and_records_a_write() -> None:
    store: dict[str, Any] = {}
    d = Deduplicator(store, ttl_ms=TTL)
    assert d.is_duplicate("e1", partition=2, offset=7, now_ms=100) is False
    assert store == {"e1": [100, 2, 7]}
    assert d.writes == [(2, "e1", [100, 2, 7])]
    assert len(d) == 1


@pytest.mark.parametrize(
    ("partition", "offset"),
    [(0, 5), (0, 6), (1, 5)],
    ids=["redelivery", "duplicate", "duplicate-other-partition"],
)
def test_repeat_within_ttl_writes_nothing(partition: int, offset: int) -> None:
    store: dict[str, Any] = {}
    d = Deduplicator(store, ttl_ms=TTL)
    d.is_duplicate("e1", partition=0, offset=5, now_ms=0)
    d.drain_writes()
    d.is_duplicate("e1", partition=partition, offset=offset, now_ms=10)
    assert d.writes == []
    assert store == {"e1": [0, 0, 5]}
    assert len(d) == 1


def test_repeat_after_ttl_refreshes_first_seen_and_writes() -> None:
    store: dict[str, Any] = {}
    d = Deduplicator(store, ttl_ms=TTL)
    d.is_duplicate("e1", partition=0, offset=0, now_ms=0)
    d.drain_writes()
    assert d.is_duplicate("e1", partition=1, offset=3, now_ms=1_500) is False
    assert store == {"e1": [1_500, 1, 3]}
    assert d.drain_writes() == [(1, "e1", [1_500, 1, 3])]


@pytest.mark.parametrize(
    ("now_ms", "expected"),
    [
        (0, []),
        (TTL - 1, []),
        (TTL, [(0, "a")]),
        (TTL + 100, [(0, "a"), (1, "b")]),
        (TTL + 199, [(0, "a"), (1, "b")]),
        (TTL + 200, [(0, "a"), (0, "c"), (1, "b")]),
        (10 * TTL, [(0, "a"), (0, "c"), (1, "b")]),
    ],
)
def test_expire_removes_ids_first_seen_at_least_ttl_ago(
    now_ms: int, expected: list[tuple[int, str]]
) -> None:
    store: dict[str, Any] = {}
    d = Deduplicator(store, ttl_ms=TTL)
    d.is_duplicate("a", partition=0, offset=0, now_ms=0)
    d.is_duplicate("b", partition=1, offset=0, now_ms=100)
    d.is_duplicate("c", partition=0, offset=1, now_ms=200)
    d.drain_writes()
    removed = d.expire(now_ms)
    assert sorted(removed) == expected
    assert set(store) == {"a", "b", "c"} - {eid for _, eid in expected}
    assert len(d) == 3 - len(expected)
    # Every removal is a changelog tombstone on the id's partition.
    assert sorted(d.writes) == [(p, eid, None) for p, eid in expected]


def test_expire_tombstones_and_drain_writes() -> None:
    d = Deduplicator({}, ttl_ms=TTL)
    d.is_duplicate("e1", partition=0, offset=0, now_ms=0)
    d.is_duplicate("e2", partition=3, offset=0, now_ms=0)
    assert d.expire(now_ms=TTL) == [(0, "e1"), (3, "e2")]
    assert d.writes == [
        (0, "e1", [0, 0, 0]),
        (3, "e2", [0, 3, 0]),
        (0, "e1", None),
        (3, "e2", None),
    ]
    drained = d.drain_writes()
    assert [w[2] for w in drained[2:]] == [None, None]
    assert d.writes == []
    assert d.drain_writes() == []
    assert d.expire(now_ms=10 * TTL) == []  # nothing left: no second tombstone
    assert d.writes == []


def test_expired_id_is_new_again() -> None:
    d = Deduplicator({}, ttl_ms=TTL)
    d.is_duplicate("e1", partition=0, offset=0, now_ms=0)
    d.expire(now_ms=2 * TTL)
    assert d.is_duplicate("e1", partition=0, offset=1, now_ms=2 * TTL + 1) is False
    assert d.is_duplicate("e1", partition=0, offset=2, now_ms=2 * TTL + 2) is True


@pytest.mark.parametrize("second_partition", [0, 1], ids=["same-partition", "other-partition"])
def test_expire_keeps_an_id_whose_first_seen_was_refreshed(second_partition: int) -> None:
    store: dict[str, Any] = {}
    d = Deduplicator(store, ttl_ms=TTL)
    d.is_duplicate("e1", partition=0, offset=0, now_ms=0)
    # Seen again after the TTL but before expire() ran: first-seen is refreshed.
    assert d.is_duplicate("e1", partition=second_partition, offset=9, now_ms=1_500) is False
    d.drain_writes()

    assert d.expire(now_ms=2_000) == []  # the stale index entry from t=0 is skipped
    assert store == {"e1": [1_500, second_partition, 9]}
    assert d.writes == []
    assert d.is_duplicate("e1", partition=0, offset=10, now_ms=2_100) is True

    assert d.expire(now_ms=2_500) == [(second_partition, "e1")]
    assert store == {}
    assert d.writes == [(second_partition, "e1", None)]


def test_expire_skips_ids_already_gone_from_the_store() -> None:
    store: dict[str, Any] = {}
    d = Deduplicator(store, ttl_ms=TTL)
    d.is_duplicate("e1", partition=0, offset=0, now_ms=0)
    d.drain_writes()
    del store["e1"]  # e.g. a tombstone applied by changelog recovery
    assert d.expire(now_ms=TTL) == []
    assert d.writes == []
    assert len(d) == 0


def populated(store: dict[str, Any]) -> Deduplicator:
    d = Deduplicator(store, ttl_ms=TTL)
    d.is_duplicate("a", partition=0, offset=0, now_ms=0)
    d.is_duplicate("b", partition=1, offset=0, now_ms=300)
    d.is_duplicate("c", partition=0, offset=1, now_ms=600)
    d.is_duplicate("d", partition=2, offset=0, now_ms=900)
    d.drain_writes()
    return d


def test_restart_without_rebuild_never_expires() -> None:
    store: dict[str, Any] = {}
    populated(store)
    restarted = Deduplicator(store, ttl_ms=TTL)
    assert len(restarted) == 0
    assert restarted.expire(now_ms=100 * TTL) == []
    assert len(store) == 4


@pytest.mark.parametrize(
    ("now_ms", "expected"),
    [
        (TTL - 1, []),
        (TTL, [(0, "a")]),
        (TTL + 300, [(0, "a"), (1, "b")]),
        (TTL + 600, [(0, "a"), (0, "c"), (1, "b")]),
        (TTL + 900, [(0, "a"), (0, "c"), (1, "b"), (2, "d")]),
    ],
)
@pytest.mark.parametrize("order", ["as-stored", "reversed"])
def test_rebuild_reindexes_so_expiry_works_after_restart(
    now_ms: int, expected: list[tuple[int, str]], order: str
) -> None:
    store: dict[str, Any] = {}
    populated(store)
    restarted = Deduplicator(store, ttl_ms=TTL)
    items = list(store.items())
    if order == "reversed":
        items.reverse()
    assert restarted.rebuild(items) == 4
    assert len(restarted) == 4

    # Duplicates are detected from the restored state...
    assert restarted.is_duplicate("a", partition=0, offset=5, now_ms=TTL - 1) is True
    # ...redelivery of the stored record is still processed again...
    assert restarted.is_duplicate("b", partition=1, offset=0, now_ms=TTL - 1) is False
    assert restarted.writes == []
    # ...and expiry works again, with tombstones.
    assert sorted(restarted.expire(now_ms)) == expected
    assert sorted(restarted.drain_writes()) == [(p, eid, None) for p, eid in expected]
    assert set(store) == {"a", "b", "c", "d"} - {eid for _, eid in expected}


def test_rebuild_accepts_tuples_and_replaces_the_index() -> None:
    store: dict[str, Any] = {"x": (0, 0, 0), "y": (TTL, 1, 0)}
    d = Deduplicator(store, ttl_ms=TTL)
    d.is_duplicate("z", partition=3, offset=0, now_ms=0)
    assert d.rebuild(store.items()) == 3
    assert d.rebuild(store.items()) == 3  # not appended twice
    assert len(d) == 3
    assert sorted(d.expire(now_ms=TTL)) == [(0, "x"), (3, "z")]


def test_rebuild_of_empty_state() -> None:
    d = Deduplicator({}, ttl_ms=TTL)
    assert d.rebuild([]) == 0
    assert len(d) == 0
    assert d.expire(now_ms=10 * TTL) == []


@pytest.mark.parametrize(
    ("forget", "expected_removed", "expected_len"),
    [
        ([], [(0, "a"), (0, "c"), (1, "b"), (2, "d")], 4),
        ([0], [(1, "b"), (2, "d")], 2),
        ([0, 2], [(1, "b")], 1),
        ([0, 1, 2], [], 0),
        ([7], [(0, "a"), (0, "c"), (1, "b"), (2, "d")], 4),  # unknown partition: no-op
        (iter([1]), [(0, "a"), (0, "c"), (2, "d")], 3),  # any iterable
    ],
    ids=["none", "one", "two", "all", "unknown", "iterator"],
)
def test_forget_partitions(
    forget: Any, expected_removed: list[tuple[int, str]], expected_len: int
) -> None:
    store: dict[str, Any] = {}
    d = populated(store)
    d.forget_partitions(forget)
    assert len(d) == expected_len
    assert sorted(d.expire(now_ms=100 * TTL)) == expected_removed
    assert len(d) == 0
    # Ids of forgotten partitions stay in the store (the new owner expires them).
    assert set(store) == {"a", "b", "c", "d"} - {eid for _, eid in expected_removed}
    assert sorted(d.drain_writes()) == [(p, eid, None) for p, eid in expected_removed]


def test_forget_partitions_then_new_sightings_are_indexed_again() -> None:
    d = populated({})
    d.forget_partitions([0])
    assert len(d) == 2
    d.is_duplicate("e", partition=0, offset=9, now_ms=1_000)
    assert len(d) == 3
    assert sorted(d.expire(now_ms=2_000)) == [(0, "e"), (1, "b"), (2, "d")]


# --- expiry in time buckets ----------------------------------------------------------------


def test_default_bucket_is_a_ten_thousandth_of_the_ttl() -> None:
    assert Deduplicator({}, ttl_ms=86_400_000).bucket_ms == 8_640
    assert Deduplicator({}, ttl_ms=TTL).bucket_ms == 1  # short TTLs expire to the millisecond


def test_ids_expire_within_one_bucket_after_their_ttl() -> None:
    store: dict[str, Any] = {}
    d = Deduplicator(store, ttl_ms=TTL, bucket_ms=100)
    d.is_duplicate("a", partition=0, offset=0, now_ms=10)  # bucket [0, 100)
    d.is_duplicate("b", partition=0, offset=1, now_ms=99)
    d.is_duplicate("c", partition=0, offset=2, now_ms=100)  # bucket [100, 200)
    assert d.expire(now_ms=TTL + 98) == []  # "b" is not past its TTL yet: the bucket waits
    assert d.expire(now_ms=TTL + 99) == [(0, "a"), (0, "b")]
    assert set(store) == {"c"} and len(d) == 1
    assert d.is_duplicate("c", partition=0, offset=3, now_ms=TTL + 99) is True  # to the ms


def test_long_and_unicode_ids_round_trip_through_the_index() -> None:
    ids = ["é" * 64, "x" * 300, "ü-1", "e"]  # up to 256 bytes in the schema; longer still works
    d = Deduplicator({}, ttl_ms=TTL, bucket_ms=50)
    for i, eid in enumerate(ids):
        d.is_duplicate(eid, partition=1, offset=i, now_ms=i)
    assert d.expire(now_ms=10 * TTL) == [(1, eid) for eid in ids]


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 400),
    st.lists(
        st.tuples(st.sampled_from("abcdef"), st.integers(0, 2), st.integers(0, 300)), max_size=60
    ),
)
def test_buckets_decide_like_exact_expiry(
    bucket_ms: int, steps: list[tuple[str, int, int]]
) -> None:
    """Same duplicate decisions as exact expiry; ids leave at most a bucket late, never early."""
    store: dict[str, Any] = {}
    d = Deduplicator(store, ttl_ms=TTL, bucket_ms=bucket_ms)
    exact: dict[str, list[int]] = {}  # reference: first sighting, expired to the millisecond
    now = 0
    for offset, (eid, partition, step_ms) in enumerate(steps):
        now += step_ms
        prev = exact.get(eid)
        want = prev is not None and now - prev[0] < TTL and prev[1:] != [partition, offset]
        if not (prev is not None and now - prev[0] < TTL):
            exact[eid] = [now, partition, offset]
        assert d.is_duplicate(eid, partition, offset, now) is want
        d.expire(now)
        exact = {k: v for k, v in exact.items() if v[0] > now - TTL}
        assert set(exact) <= set(store)  # never early
        assert all(v[0] > now - TTL - bucket_ms for v in store.values())  # at most a bucket late
