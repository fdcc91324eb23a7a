"""Unit tests for stream.core.dedup_rocks: the RocksDB index decides like Deduplicator."""

from __future__ import annotations

import tempfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rocksdict
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core import dedup_rocks
from stream.core.dedup import Deduplicator, DedupRecordError, decode_record, fingerprint
from stream.core.dedup_rocks import RocksDeduplicator
from stream.core.rocks_budget import RocksBudget
from tests.stream.core.test_dedup import BATCH, SEQUENCES, TTL, Model, Step, _record, _resealed

BUDGET = RocksBudget(16 * 1024 * 1024)  # one cache for every database of the module


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Any]:
    made: list[RocksDeduplicator] = []

    def factory(ttl_ms: int = TTL, **kwargs: Any) -> RocksDeduplicator:
        d = RocksDeduplicator(ttl_ms, tmp_path / f"db{len(made)}", BUDGET, **kwargs)
        made.append(d)
        return d

    yield factory
    for d in made:
        d.close()


class CountingFamily:
    """Wraps a column family's Rdict to count multi-gets and the keys they ask."""

    def __init__(self, cf: Any, calls: list[tuple[str, int]], name: str) -> None:
        self.cf, self.calls, self.name = cf, calls, name

    def get(self, keys: list[bytes]) -> Any:
        assert isinstance(keys, list)  # one multi-get, never one get per id
        self.calls.append((self.name, len(keys)))
        return self.cf.get(keys)


def _families(d: RocksDeduplicator) -> list[str]:
    return sorted(rocksdict.Rdict.list_cf(str(d.path), BUDGET.options()))


@pytest.mark.parametrize("steps", list(SEQUENCES.values()), ids=list(SEQUENCES))
def test_is_duplicate_sequences(make: Any, steps: list[Step]) -> None:
    d = make()
    got = [d.is_duplicate(eid, partition=p, offset=o, now_ms=t) for eid, p, o, t, _ in steps]
    assert got == [expected for *_, expected in steps]


def test_check_in_one_call_with_several_partitions(make: Any) -> None:
    d = make()
    ids = ["e1", "e1", "e2", "e1", "e1", "e2", "e3"]
    parts = [0, 1, 1, 0, 0, 1, 2]
    offs = [5, 5, 6, 5, 9, 7, 0]
    expected = [False, False, False, False, True, True, False]
    assert d.check(ids, parts, offs, now_ms=0) == expected
    assert len(d) == 4
    assert d.check(ids, parts, offs, now_ms=TTL - 1) == expected
    assert d.check(["e1", "e2", "e3"], [1, 1, 2], [4, 6, 1], now_ms=10) == [True, False, True]
    assert d.check([], [], [], now_ms=20) == []
    assert d.check(["e1", "e1"], [0, 1], [6, 6], now_ms=TTL) == [False, False]  # after the TTL


def test_check_rejects_bad_arguments(make: Any) -> None:
    d = make()
    with pytest.raises(ValueError, match="one partition and offset per id"):
        d.check(["a", "b"], [0], [1, 2], now_ms=0)
    with pytest.raises(ValueError, match="not a Kafka partition"):
        d.check(["a", "b"], [0, -1], [1, 2], now_ms=0)
    with pytest.raises(ValueError, match="not a Kafka partition"):
        d.restore(2**31, [], now_ms=0)
    with pytest.raises(ValueError, match="positive"):
        RocksDeduplicator(0, d.path, BUDGET)


def test_check_accepts_numpy_partitions_and_offsets(make: Any) -> None:
    d = make()
    parts, offs = np.array([3, 3, 4]), np.array([10, 11, 10])
    assert d.check(["a", "a", "a"], parts, offs, now_ms=0) == [False, True, False]


@pytest.mark.parametrize(
    ("now_ms", "expected_len"),
    [(0, 3), (TTL - 1, 3), (TTL + 248, 3), (TTL + 249, 1), (TTL + 498, 1), (TTL + 499, 0)],
)
def test_expire_drops_whole_segments(make: Any, now_ms: int, expected_len: int) -> None:
    # Segments are shared by the partitions: slot [0, 250) holds "a" and "b".
    d = make(segments=4)
    d.is_duplicate("a", partition=0, offset=0, now_ms=0)
    d.is_duplicate("b", partition=1, offset=0, now_ms=100)
    d.is_duplicate("c", partition=0, offset=1, now_ms=300)  # slot [250, 500)
    d.is_duplicate("b", partition=1, offset=2, now_ms=150)  # a duplicate: not remembered
    assert _families(d) == ["default", "s0", "s1"]
    d.expire(now_ms=now_ms // 2)  # never early
    assert d.expire(now_ms) == 3 - expected_len
    assert len(d) == expected_len
    assert d.expire(now_ms) == 0
    assert len(_families(d)) == 1 + {3: 2, 1: 1, 0: 0}[expected_len]


def test_ids_are_remembered_at_least_ttl_and_at_most_a_segment_more(make: Any) -> None:
    d = make(segments=4)
    d.is_duplicate("a", partition=0, offset=0, now_ms=0)
    d.is_duplicate("b", partition=0, offset=1, now_ms=249)  # same segment [0, 250)
    d.is_duplicate("c", partition=0, offset=2, now_ms=250)  # the next one
    assert d.expire(now_ms=TTL + 248) == 0  # "b" is not past its TTL: the segment waits
    assert d.is_duplicate("a", partition=0, offset=3, now_ms=TTL + 248) is False  # to the ms
    assert d.expire(now_ms=TTL + 249) == 2  # "a" and "b": segment [0, 250)
    assert len(d) == 2  # "c" and the new "a"
    assert d.is_duplicate("c", partition=0, offset=4, now_ms=TTL + 249) is True


def test_expired_id_is_new_again(make: Any) -> None:
    d = make()
    d.is_duplicate("e1", partition=0, offset=0, now_ms=0)
    assert d.expire(now_ms=2 * TTL) == 1
    assert d.is_duplicate("e1", partition=0, offset=1, now_ms=2 * TTL + 1) is False
    assert d.is_duplicate("e1", partition=0, offset=2, now_ms=2 * TTL + 2) is True


def test_expire_is_cheap_when_nothing_is_due(make: Any) -> None:
    d = make()  # 125 ms segments
    assert d.expire(now_ms=0) == 0
    d.is_duplicate("e1", partition=0, offset=0, now_ms=100)
    assert d._next_due == 124 + TTL
    assert d.expire(now_ms=123 + TTL) == 0
    assert d.expire(now_ms=124 + TTL) == 1


def test_a_re_sighting_in_the_same_segment_is_counted_once(make: Any) -> None:
    d = make()
    d.is_duplicate("e1", partition=0, offset=0, now_ms=5_000)
    d.is_duplicate("e2", partition=0, offset=1, now_ms=5_001 - TTL)  # the clock stepped back
    assert d.is_duplicate("e2", partition=0, offset=2, now_ms=5_001) is False  # a new sighting
    assert len(d) == 3  # "e2" is in two segments
    assert d.check(["e2"] * 2, [0, 0], [3, 2], now_ms=5_002) == [True, False]


def test_long_and_unicode_ids(make: Any) -> None:
    ids = ["é" * 64, "x" * 300, "ü-1", "e", "", "a\x00", "𝄞" * 64, "\udc80"]
    d = make()
    assert d.check(ids, [1] * len(ids), list(range(len(ids))), now_ms=0) == [False] * len(ids)
    assert d.check(ids, [1] * len(ids), [9] * len(ids), now_ms=1) == [True] * len(ids)
    assert decode_record(d.drain_records()[1]).ids == ids


def test_one_multi_get_per_family_newest_first(make: Any) -> None:
    d = make(segments=4)  # 250 ms segments
    for t in (0, 250, 500):
        d.check([f"{t}-{i}" for i in range(4)], [0] * 4, list(range(t, t + 4)), now_ms=t)
    calls: list[tuple[str, int]] = []
    for seg in d._segments.values():
        seg.cf = CountingFamily(seg.cf, calls, seg.name)
    ids = ["500-0", "250-1", "0-2", "0-3", "new", "500-1"]
    assert d.check(ids, [0] * 6, [9] * 6, now_ms=600) == [True] * 4 + [False, True]
    # found ids are not asked again; the others go on to older segments
    assert calls == [("s2", 6), ("s1", 4), ("s0", 3)]
    calls.clear()
    assert d.check(["500-2", "500-3"], [0, 0], [9, 9], now_ms=601) == [True, True]
    assert calls == [("s2", 2)]  # all found in the newest segment


# --- the reference model, both classes and records across them ------------------------------

OP: st.SearchStrategy[tuple[str, list[tuple[str, int, int]], int]] = st.one_of(
    st.tuples(st.just("check"), BATCH, st.integers(0, 400)),
    st.tuples(st.just("expire"), st.just([]), st.integers(0, 400)),
    st.tuples(st.just("restore"), st.just([]), st.integers(0, 400)),
    st.tuples(st.just("forget"), st.just([]), st.integers(0, 2)),
)


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(OP, max_size=40), segments=st.integers(1, 5), swap=st.booleans())
def test_decides_like_a_plain_dict_and_like_deduplicator(
    ops: list[tuple[str, list[tuple[str, int, int]], int]], segments: int, swap: bool
) -> None:
    """Same answers as the reference (and byte-identical records as Deduplicator).

    On "restore" each class is rebuilt from the records both wrote (the same
    bytes), read back into the other class when ``swap``: restoring any record
    into either class gives the same answers.
    """
    with tempfile.TemporaryDirectory() as tmp:
        generation = 0

        def fresh() -> RocksDeduplicator:
            nonlocal generation
            generation += 1
            return RocksDeduplicator(TTL, Path(tmp) / str(generation), BUDGET, segments=segments)

        rocks, mem, model = fresh(), Deduplicator(TTL, segments=segments), Model()
        log: dict[int, list[tuple[int, bytes]]] = {}
        now = 0

        def drain() -> None:
            records = rocks.drain_records()
            assert records == mem.drain_records()
            for p, value in records.items():
                log.setdefault(p, []).append((now, value))

        for op, batch, step in ops:
            if op == "forget":  # the partition and its changelog are gone
                drain()
                rocks.forget_partitions([step, 7])
                mem.forget_partitions([step, 7])
                log.pop(step, None)
                model.seen = {k: v for k, v in model.seen.items() if k[0] != step}
                continue
            now += step
            if op == "check":
                ids = [r[0] for r in batch]
                parts, offs = [r[1] for r in batch], [r[2] for r in batch]
                expected = model.check(ids, parts, offs, now)
                assert rocks.check(ids, parts, offs, now) == expected
                assert mem.check(ids, parts, offs, now) == expected
            elif op == "expire":
                rocks.expire(now)
                mem.expire(now)
            else:
                drain()
                rocks.close()
                rocks, mem = fresh(), Deduplicator(TTL, segments=segments)
                for p, records in log.items():
                    a, b = (mem, rocks) if swap else (rocks, mem)
                    assert a.restore(p, records, now) == b.restore(p, records, now)
            live = {k for k, (seen, _) in model.seen.items() if now - seen < TTL}
            assert len(rocks) >= len(live)
        rocks.close()


def test_records_restore_into_either_class(make: Any) -> None:
    ids = [f"id{i}" for i in range(50)]
    parts = [i % 3 for i in range(50)]
    mem = Deduplicator(TTL)
    rocks = make()
    for d in (mem, rocks):
        d.check(ids[:30], parts[:30], list(range(30)), now_ms=0)
        d.check(ids[30:], parts[30:], list(range(30, 50)), now_ms=400)
    from_mem, from_rocks = mem.drain_records(), rocks.drain_records()
    assert from_mem == from_rocks  # byte for byte
    into_rocks, into_mem = make(), Deduplicator(TTL)
    # the ids of the first batch (seen at 0) are expired at TTL + 100
    for target, records in ((into_rocks, from_mem), (into_mem, from_rocks)):
        restored = sum(target.restore(p, [(0, records[p])], now_ms=TTL + 100) for p in range(3))
        assert restored == 20
        assert target.check(ids, parts, [99] * 50, now_ms=TTL + 200) == [False] * 30 + [True] * 20
        assert target.check(ids[30:], parts[30:], list(range(30, 50)), TTL + 201) == [False] * 20


def test_drain_records_one_per_partition(make: Any) -> None:
    d = make()
    d.check(["a", "b", "a"], [0, 2, 0], [10, 20, 11], now_ms=5)
    d.check(["c", "a"], [0, 2], [12, 21], now_ms=7)
    d.check(["a"], [0], [13], now_ms=8)  # a duplicate: nothing to write
    records = d.drain_records()
    assert sorted(records) == [0, 2]
    r0, r2 = decode_record(records[0]), decode_record(records[2])
    assert r0.ids == ["a", "c"]
    assert r0.offsets.tolist() == [10, 12] and r0.base_offset == 10
    assert r0.first_seen_ms.tolist() == [5, 7] and r0.seen_ms == 7
    assert r0.fingerprints.tolist() == [fingerprint("a"), fingerprint("c")]
    assert r2.ids == ["b", "a"] and r2.offsets.tolist() == [20, 21]
    assert d.drain_records() == {}


def test_restore_replaces_and_skips_expired_records(make: Any) -> None:
    d = make(segments=2)
    d.check(["old"], [1], [0], now_ms=0)
    early = d.drain_records()[1]
    d.check(["mid", "late"], [1, 1], [1, 2], now_ms=600)
    d.check(["late2"], [1], [3], now_ms=900)
    later = d.drain_records()[1]
    r = make(segments=2)
    r.check(["other"], [1], [50], now_ms=0)  # replaced by the restore
    r.check(["kept"], [2], [50], now_ms=0)  # another partition: kept
    assert r.restore(1, [(0, early), (900, later)], now_ms=TTL) == 3  # "old" expired
    assert len(r) == 4
    assert r.check(["old", "mid", "late2", "other"], [1] * 4, [9] * 4, now_ms=TTL) == [
        False,
        True,
        True,
        False,
    ]
    assert r.check(["mid"], [1], [1], now_ms=TTL) == [False]  # the same record again
    assert r.is_duplicate("kept", 2, 51, now_ms=TTL - 1) is True
    assert r.drain_records().keys() == {1, 2}  # what check() saw, not what was restored
    assert r.restore(1, [], now_ms=TTL) == 0 and len(r) == 1


def test_restore_large_records(make: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dedup_rocks, "_RESTORE_BATCH", 1500)  # several write batches
    d = make()
    ids = [f"user-{i}" for i in range(5000)]
    for lo in range(0, 5000, 1000):
        d.check(ids[lo : lo + 1000], [0] * 1000, list(range(lo, lo + 1000)), now_ms=lo)
    values = list(d.drain_records().values())
    r = make()
    assert r.restore(0, [(0, v) for v in values], now_ms=1) == 5000 == len(r)
    sample = ids[::7]
    assert r.check(sample, [0] * len(sample), [-1] * len(sample), 2) == [True] * len(sample)
    assert r.check(ids[:3], [0] * 3, [0, 1, 2], 2) == [False] * 3


def test_records_with_offsets_spanning_2_32(make: Any) -> None:
    d = make()
    offs = [0, 2**33, 5, 2**40]
    assert d.check(["a", "b", "c", "d"], [0] * 4, offs, now_ms=0) == [False] * 4
    assert d.check(["a", "b", "c", "d"], [0] * 4, offs, now_ms=1) == [False] * 4  # redelivery
    assert d.check(["a", "d"], [0, 0], [1, 1], now_ms=2) == [True, True]
    value = d.drain_records()[0]
    assert value[0] == 2  # the version with 64-bit relative offsets
    assert decode_record(value).offsets.tolist() == offs
    r = make()
    r.restore(0, [(0, value)], now_ms=3)
    assert r.check(["a", "b", "c", "d"], [0] * 4, offs, now_ms=4) == [False] * 4
    assert r.check(["b", "c"], [0, 0], [1, 1], now_ms=5) == [True, True]


@pytest.mark.parametrize(
    "value",
    [
        b"",
        _record()[:10],
        _record()[:-1],
        _record() + b"x",
        b"\x07" + _record()[1:],
        _record()[:-2] + b"d\xff",
        _resealed(
            (1, 2, 1, 1, 5), bytes(8) + (3).to_bytes(4, "little") + bytes(24) + b"ab\xffc\xff"
        ),
        _resealed((1, 2, 1, 1, 5), bytes(8) + (2).to_bytes(4, "little") + bytes(24) + b"abxc\xff"),
        _resealed((1, 0, 0, 0, 0), b""),
    ],
    ids=[
        "empty",
        "short-header",
        "truncated",
        "trailing",
        "version",
        "checksum",
        "block-sizes",
        "missing-terminator",
        "no-ids",
    ],
)
def test_bad_records_raise_dedup_record_error(make: Any, value: bytes) -> None:
    d = make()
    d.is_duplicate("kept", 0, 0, now_ms=0)
    with pytest.raises(DedupRecordError, match="delete the changelog topic"):
        d.restore(0, [(0, _record()), (0, value)], now_ms=0)
    # the records before the bad one are in, and counted
    assert len(d) == 2
    assert d.check(["ab", "c", "kept"], [0] * 3, [9] * 3, now_ms=1) == [True, True, False]


# --- the directory, partitions, legacy state, memory -----------------------------------------


def test_the_directory_is_wiped_at_start_and_close(tmp_path: Path) -> None:
    path = tmp_path / "dedup"
    (path / "old").mkdir(parents=True)
    (path / "old" / "x.sst").write_bytes(b"stale")
    (path / "LOG").write_text("stale")
    d = RocksDeduplicator(TTL, path, BUDGET)
    assert not (path / "old").exists()
    d.check(["a"], [0], [0], now_ms=0)
    d.close()
    assert list(path.iterdir()) == [] and len(d) == 0 and d.index_bytes() == 0
    d.close()  # twice is fine
    assert d.check(["a", "a"], [0, 0], [1, 2], now_ms=1) == [False, True]  # usable again
    assert d.index_bytes() > 0
    d.close()
    again = RocksDeduplicator(TTL, path, BUDGET)  # close() released the lock
    assert again.check(["a"], [0], [3], now_ms=2) == [False]
    again.close()


def test_forget_partitions_deletes_their_ids(make: Any) -> None:
    d = make()
    for p in range(3):
        d.check([f"{p}-{i}" for i in range(5)], [p] * 5, list(range(5)), now_ms=0)
    d.check(["x", "x"], [0, 2], [9, 9], now_ms=300)  # in a second segment
    d.forget_partitions(iter([0, 2, 7, -1]))  # any iterable; unknown partitions are a no-op
    assert len(d) == 5
    assert d.drain_records().keys() == {1}  # undrained ids of forgotten partitions are dropped
    assert d.is_duplicate("0-1", partition=0, offset=9, now_ms=301) is False  # indexed again
    assert d.is_duplicate("x", partition=2, offset=1, now_ms=301) is False
    assert d.is_duplicate("1-1", partition=1, offset=9, now_ms=301) is True
    assert d.is_duplicate("0-1", partition=0, offset=10, now_ms=302) is True


def test_restore_legacy(make: Any) -> None:
    d = make()
    items: list[tuple[str, Any]] = [
        ("a", [0, 2, 7]),  # expired at now=1200
        ("b", [500, 2, 8]),
        ("c", [900, 0, 1]),
        ("d", (900, 0, 2)),
        ("e", [500, 2, 9]),
    ]
    assert d.restore_legacy(items, now_ms=1200) == 4
    assert len(d) == 4
    assert d.check(
        ["a", "b", "b", "c", "d", "e"], [2, 2, 2, 0, 0, 0], [1, 9, 8, 1, 5, 9], 1300
    ) == [False, True, False, False, True, False]  # "e" was seen on partition 2
    assert d.is_duplicate("b", partition=2, offset=1, now_ms=1500) is False  # its TTL is over
    records = d.drain_records()
    assert decode_record(records[2]).ids == ["b", "e", "a", "b"]
    assert decode_record(records[2]).first_seen_ms.tolist() == [500, 500, 1300, 1500]
    assert d.restore_legacy([], now_ms=0) == 0
    mem = Deduplicator(TTL)
    mem.restore_legacy(items, now_ms=1200)
    mem.check(["a", "b", "b", "c", "d", "e"], [2, 2, 2, 0, 0, 0], [1, 9, 8, 1, 5, 9], 1300)
    mem.is_duplicate("b", partition=2, offset=1, now_ms=1500)
    assert mem.drain_records() == records


def test_nothing_per_id_stays_in_python_memory(make: Any) -> None:
    d = make()
    d.check(["warm", "up", "up"], [0, 1, 1], [0, 0, 1], now_ms=0)  # imports what numpy needs
    d.drain_records()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for b in range(40):
            ids = [f"{b}-{i}-0b7e6c1e-2f1d-4a8e-9f3a" for i in range(1000)]
            d.check(ids, [i % 4 for i in range(1000)], list(range(1000)), now_ms=b)
            d.drain_records()
        del ids
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(d) == 40_002
    assert grown < 16 * 1024, grown  # 40,000 ids: well under 1 B each
