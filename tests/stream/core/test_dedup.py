"""Unit tests for stream.core.dedup: TTL, redelivery, expiry, collisions, changelog records."""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.core import dedup as dedup_module
from stream.core.dedup import (
    Deduplicator,
    DedupRecordError,
    decode_record,
    fingerprint,
)
from stream.core.errors import PulseError

TTL = 1_000

# A step is (event_id, partition, offset, now_ms, expected is_duplicate result).
Step = tuple[str, int, int, int, bool]

SEQUENCES: dict[str, list[Step]] = {
    "first sighting": [("e1", 0, 0, 0, False)],
    "repeat within ttl at another offset": [("e1", 0, 0, 0, False), ("e1", 0, 1, 10, True)],
    "repeat just before ttl": [("e1", 0, 0, 0, False), ("e1", 0, 1, TTL - 1, True)],
    "repeat exactly at ttl is new": [("e1", 0, 0, 0, False), ("e1", 0, 1, TTL, False)],
    "repeat long after ttl is new": [("e1", 0, 0, 0, False), ("e1", 0, 1, 50 * TTL, False)],
    "lookups are per partition": [("e1", 0, 0, 0, False), ("e1", 1, 0, 10, False)],
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
        ("e2", 0, 3, 3, True),
    ],
    "window counts from the first sighting, not the last repeat": [
        ("e1", 0, 0, 0, False),
        ("e1", 0, 1, 900, True),
        ("e1", 0, 2, TTL, False),
        ("e1", 0, 3, TTL + 999, True),
        ("e1", 0, 4, 2 * TTL, False),
    ],
    "a redelivery of the first sighting after a re-sighting is a duplicate": [
        ("e1", 0, 0, 0, False),
        ("e1", 0, 7, TTL + 5, False),
        ("e1", 0, 0, TTL + 6, True),
        ("e1", 0, 7, TTL + 7, False),
    ],
    "clock stepping back": [
        ("e1", 0, 0, 5_000, False),
        ("e1", 0, 1, 100, True),
        ("e2", 0, 2, 100, False),
        ("e2", 0, 3, 5_000, False),  # first seen at 100: its TTL is over
        ("e2", 0, 4, 5_001, True),
    ],
}


class Model:
    """Reference: a plain dict ``(partition, id) -> (first_seen_ms, offset)``."""

    def __init__(self, ttl_ms: int = TTL) -> None:
        self.ttl_ms = ttl_ms
        self.seen: dict[tuple[int, str], tuple[int, int]] = {}

    def check(
        self, ids: list[str], partitions: list[int], offsets: list[int], now: int
    ) -> list[bool]:
        out = []
        for event_id, p, o in zip(ids, partitions, offsets, strict=True):
            prev = self.seen.get((p, event_id))
            if prev is not None and now - prev[0] < self.ttl_ms:
                out.append(prev[1] != o)
            else:
                self.seen[(p, event_id)] = (now, o)
                out.append(False)
        return out


@pytest.fixture(params=["memory", "files"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    made: list[Deduplicator] = []

    def factory(ttl_ms: int = TTL, **kwargs: Any) -> Deduplicator:
        id_dir = tmp_path / f"ids{len(made)}" if request.param == "files" else None
        d = Deduplicator(ttl_ms, id_dir, **kwargs)
        made.append(d)
        return d

    yield factory
    for d in made:
        d.close()


@pytest.mark.parametrize("steps", list(SEQUENCES.values()), ids=list(SEQUENCES))
@pytest.mark.parametrize("run_size", [1, 65536], ids=["sealed", "open"])
def test_is_duplicate_sequences(make: Any, steps: list[Step], run_size: int) -> None:
    d = make(run_size=run_size)
    got = [d.is_duplicate(eid, partition=p, offset=o, now_ms=t) for eid, p, o, t, _ in steps]
    assert got == [expected for *_, expected in steps]


def test_check_in_one_call_with_several_partitions(make: Any) -> None:
    d = make()
    ids = ["e1", "e1", "e2", "e1", "e1", "e2", "e3"]
    parts = [0, 1, 1, 0, 0, 1, 2]
    offs = [5, 5, 6, 5, 9, 7, 0]
    # e1@p0, e1@p1 and e2@p1 are first sightings; e1@p0:5 again is the same record;
    # e1@p0:9 and e2@p1:7 repeat their partition's first occurrence.
    assert d.check(ids, parts, offs, now_ms=0) == [False, False, False, False, True, True, False]
    assert len(d) == 4
    assert d.check(ids, parts, offs, now_ms=TTL - 1) == [
        False,
        False,
        False,
        False,
        True,
        True,
        False,
    ]
    assert d.check(["e1", "e2", "e3"], [1, 1, 2], [4, 6, 1], now_ms=10) == [True, False, True]
    assert d.check([], [], [], now_ms=20) == []
    assert d.check(["e1", "e1"], [0, 1], [6, 6], now_ms=TTL) == [False, False]  # after the TTL


def test_check_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="one partition and offset per id"):
        Deduplicator(TTL).check(["a", "b"], [0], [1, 2], now_ms=0)


def test_check_accepts_numpy_partitions_and_offsets(make: Any) -> None:
    d = make()
    parts, offs = np.array([3, 3, 4]), np.array([10, 11, 10])
    assert d.check(["a", "a", "a"], parts, offs, now_ms=0) == [False, True, False]


@pytest.mark.parametrize(
    ("now_ms", "expected_len"),
    [(0, 3), (TTL - 1, 3), (TTL, 2), (TTL + 150, 1), (TTL + 299, 1), (TTL + 300, 0)],
)
def test_expire_forgets_whole_segments(make: Any, now_ms: int, expected_len: int) -> None:
    d = make(segments=4)  # 250 ms segments
    d.is_duplicate("a", partition=0, offset=0, now_ms=0)
    d.is_duplicate("b", partition=1, offset=0, now_ms=100)  # partition 1: segment [0, 250)
    d.is_duplicate("c", partition=0, offset=1, now_ms=300)  # partition 0: segment [250, 500)
    d.is_duplicate("b", partition=1, offset=2, now_ms=150)  # a duplicate: not remembered
    d.expire(now_ms=now_ms // 2)  # never early
    assert d.expire(now_ms) == 3 - expected_len
    assert len(d) == expected_len
    assert d.expire(now_ms) == 0


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


def test_expire_is_cheap_when_nothing_is_due() -> None:
    d = Deduplicator(TTL)
    assert d.expire(now_ms=0) == 0
    d.is_duplicate("e1", partition=0, offset=0, now_ms=100)
    assert d._next_due == 100 + TTL
    assert d.expire(now_ms=100 + TTL - 1) == 0
    assert d.expire(now_ms=100 + TTL) == 1


def test_long_and_unicode_ids(make: Any) -> None:
    ids = ["é" * 64, "x" * 300, "ü-1", "e", "", "a\x00", "𝄞" * 64]
    d = make(run_size=3)
    assert d.check(ids, [1] * len(ids), list(range(len(ids))), now_ms=0) == [False] * len(ids)
    assert d.check(ids, [1] * len(ids), [9] * len(ids), now_ms=1) == [True] * len(ids)
    assert decode_record(d.drain_records()[1]).ids == ids


# --- fingerprints ---------------------------------------------------------------------------


def test_fingerprint_is_stable_and_independent_of_the_batch() -> None:
    # Pinned: fingerprints are stored in changelog records.
    assert fingerprint("e1") == fingerprint("e1")
    assert fingerprint("0b7e6c1e-2f1d-4a8e-9f3a-3c5d2e1f0a9b") == 12945541676339254308
    ids = ["e1", "a" * 65, "", "ü", "x" * 8, "x" * 16]
    raw = [i.encode() for i in ids]
    together = dedup_module._fingerprints(raw, max(map(len, raw))).tolist()
    wide = dedup_module._fingerprints(raw, 600).tolist()  # more keys than the default 64
    assert together == wide == [fingerprint(i) for i in ids]
    assert len(set(together)) == len(ids)


@pytest.fixture
def colliding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every id gets one of three fingerprints."""
    real = dedup_module._fingerprints

    def few(encoded: list[bytes], width: int) -> Any:
        return real(encoded, width) % np.uint64(3)

    monkeypatch.setattr(dedup_module, "_fingerprints", few)


@pytest.mark.usefixtures("colliding")
@pytest.mark.parametrize("run_size", [1, 2, 65536])
def test_colliding_fingerprints_never_make_a_duplicate(make: Any, run_size: int) -> None:
    d = make(run_size=run_size)
    ids = [f"id{i}" for i in range(40)]
    assert d.check(ids, [0] * 40, list(range(40)), now_ms=0) == [False] * 40
    assert d.check(ids[:20], [0] * 20, list(range(20)), now_ms=1) == [False] * 20  # redelivery
    assert d.check(ids, [0] * 40, [99] * 40, now_ms=2) == [True] * 40
    assert d.check(["new", "id3", "new"], [0, 0, 0], [100, 101, 102], now_ms=3) == [
        False,
        True,
        True,
    ]
    restored = make(run_size=run_size)
    restored.restore(0, [(0, v) for v in d.drain_records().values()], now_ms=4)
    assert restored.check([*ids, "new", "other"], [0] * 42, [99] * 42, now_ms=5) == [True] * 41 + [
        False
    ]


def test_constant_fingerprint_in_the_open_dict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        dedup_module, "_fingerprints", lambda encoded, width: np.zeros(len(encoded), np.uint64)
    )
    d = Deduplicator(TTL)
    assert d.check(["a", "b", "c", "a"], [0] * 4, [0, 1, 2, 3], now_ms=0) == [
        False,
        False,
        False,
        True,
    ]
    assert d.check(["c", "d", "b"], [0] * 3, [2, 4, 9], now_ms=1) == [False, False, True]
    assert len(d) == 4


# --- the reference model ---------------------------------------------------------------------

ID = st.sampled_from(["a", "b", "c", "d", "e", "ü" * 3])
BATCH = st.lists(st.tuples(ID, st.integers(0, 2), st.integers(0, 12)), min_size=0, max_size=8)
OP: st.SearchStrategy[tuple[str, list[tuple[str, int, int]], int]] = st.one_of(
    st.tuples(st.just("check"), BATCH, st.integers(0, 400)),
    st.tuples(st.just("expire"), st.just([]), st.integers(0, 400)),
    st.tuples(st.just("restore"), st.just([]), st.integers(0, 400)),
)


@settings(max_examples=250, deadline=None)
@given(
    ops=st.lists(OP, max_size=40),
    run_size=st.sampled_from([1, 2, 3, 65536]),
    segments=st.integers(1, 5),
    files=st.booleans(),
    few_fingerprints=st.booleans(),
)
def test_decides_like_a_plain_dict(
    ops: list[tuple[str, list[tuple[str, int, int]], int]],
    run_size: int,
    segments: int,
    files: bool,
    few_fingerprints: bool,
) -> None:
    """Same answers as the reference through check, expire and drain + restore."""
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        if few_fingerprints:
            real = dedup_module._fingerprints
            mp.setattr(dedup_module, "_fingerprints", lambda e, w: real(e, w) % np.uint64(2))
        generation = 0

        def fresh() -> Deduplicator:
            nonlocal generation
            generation += 1
            id_dir = Path(tmp) / str(generation) if files else None
            return Deduplicator(TTL, id_dir, run_size=run_size, segments=segments)

        d, model = fresh(), Model()
        log: dict[int, list[tuple[int, bytes]]] = {}
        now = 0
        for op, batch, step in ops:
            now += step
            if op == "check":
                ids, parts, offs = (
                    [r[0] for r in batch],
                    [r[1] for r in batch],
                    [r[2] for r in batch],
                )
                assert d.check(ids, parts, offs, now) == model.check(ids, parts, offs, now)
            elif op == "expire":
                d.expire(now)
                live = {k for k, (seen, _) in model.seen.items() if now - seen < TTL}
                assert len(d) >= len(live)
            else:
                for p, value in d.drain_records().items():
                    log.setdefault(p, []).append((now, value))
                d.close()
                d = fresh()
                for p, records in log.items():
                    d.restore(p, records, now)
                live = {k for k, (seen, _) in model.seen.items() if now - seen < TTL}
                assert len(d) >= len(live)
        d.close()


# --- changelog records -------------------------------------------------------------------------


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
    assert r.restore(1, [(0, early), (900, later)], now_ms=TTL) == 3  # "old" expired
    assert len(r) == 3
    assert r.check(["old", "mid", "late2", "other"], [1] * 4, [9] * 4, now_ms=TTL) == [
        False,
        True,
        True,
        False,
    ]
    assert r.check(["mid"], [1], [1], now_ms=TTL) == [False]  # the same record again
    assert r.restore(1, [], now_ms=TTL) == 0 and len(r) == 0
    assert r.drain_records() == {}


def test_restore_large_records_is_vectorised(make: Any) -> None:
    d = make(run_size=1000)
    ids = [f"user-{i}" for i in range(5000)]
    d.check(ids, [0] * 5000, list(range(5000)), now_ms=0)
    values = list(d.drain_records().values())
    r = make(run_size=1000)
    assert r.restore(0, [(0, v) for v in values], now_ms=1) == 5000
    assert r.check(ids[::7], [0] * len(ids[::7]), [-1] * len(ids[::7]), 2) == [True] * len(ids[::7])
    assert r.index_bytes() == 12 * 5000 + 16  # one sorted run, one block


def test_records_with_offsets_spanning_2_32(make: Any) -> None:
    d = make(run_size=2)
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


def _record() -> bytes:
    d = Deduplicator(TTL)
    d.check(["ab", "c"], [0, 0], [1, 2], now_ms=0)
    return d.drain_records()[0]


def _resealed(head: tuple[int, int, int, int, int], body: bytes) -> bytes:
    """A record with a recomputed checksum (to reach the checks behind it)."""
    packed = struct.pack("<BIIqI", *head)
    return packed + zlib.crc32(body, zlib.crc32(packed)).to_bytes(4, "little") + body


def test_record_round_trip() -> None:
    r = decode_record(_record())
    assert (r.ids, r.offsets.tolist(), r.seen_ms) == (["ab", "c"], [1, 2], 0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"", "truncated: 0 bytes"),
        (_record()[:10], "truncated: 10 bytes"),
        (_record()[:-1], "truncated: its header announces 2 ids"),
        (_record() + b"x", "1 bytes too long"),
        (b"\x07" + _record()[1:], "unknown dedup record version 7"),
        (_record()[:-2] + b"d\xff", "fails its checksum"),
        (
            _resealed(
                (1, 2, 1, 1, 5), bytes(8) + (3).to_bytes(4, "little") + bytes(24) + b"ab\xffc\xff"
            ),
            "block sizes sum to 3",
        ),
        (
            _resealed(
                (1, 2, 1, 1, 5), bytes(8) + (2).to_bytes(4, "little") + bytes(24) + b"abxc\xff"
            ),
            "2 ids announced, 1 found",
        ),
        (
            _resealed(
                (1, 2, 1, 1, 5),
                bytes(8) + (2).to_bytes(4, "little") + bytes(24) + b"a\xffbc\xff"[::-1],
            ),
            "2 ids announced",
        ),
        (_resealed((1, 0, 0, 0, 0), b""), "at least one id"),
        (
            _resealed(
                (1, 1, 1, 0, 2), bytes(8) + (1).to_bytes(4, "little") + bytes(12) + b"\xfe\xff"
            ),
            "not UTF-8",
        ),
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
        "misplaced-terminator",
        "no-ids",
        "not-utf8",
    ],
)
def test_bad_records_raise_a_clear_error(value: bytes, message: str) -> None:
    with pytest.raises(DedupRecordError, match=message) as err:
        decode_record(value)
    assert isinstance(err.value, PulseError) and isinstance(err.value, ValueError)
    assert "delete the changelog topic" in str(err.value)  # says what to do
    if message != "not UTF-8":  # restore does not decode the ids
        d = Deduplicator(TTL)
        d.is_duplicate("kept", 0, 0, now_ms=0)
        with pytest.raises(DedupRecordError, match=message):
            d.restore(0, [(0, _record()), (0, value)], now_ms=0)


# --- files under id_dir --------------------------------------------------------------------------


def test_id_files_are_created_read_on_hits_and_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "dedup-p0-s7.ids").write_bytes(b"stale")  # left by an earlier process
    (tmp_path / "dedup-p0-s7.entries").write_bytes(b"stale")
    (tmp_path / "unrelated.txt").write_text("kept")
    d = Deduplicator(TTL, tmp_path, segments=2)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["unrelated.txt"]
    reads: list[int] = []
    real_pread = os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        reads.append(n)
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", pread)
    d.check(["a", "bb"], [0, 3], [0, 0], now_ms=0)
    d.check(["c"], [0], [1], now_ms=600)  # next segment
    assert sorted(f.name for f in tmp_path.glob("*.ids")) == [
        "dedup-p0-s0.ids",
        "dedup-p0-s1.ids",
        "dedup-p3-s0.ids",
    ]
    assert (tmp_path / "dedup-p0-s0.ids").read_bytes() == b"a\xff"
    assert (tmp_path / "dedup-p0-s1.ids").read_bytes() == b"c\xff"
    assert d.check(["new1", "new2"], [0, 0], [2, 3], now_ms=601) == [False, False]
    assert reads == []  # no fingerprint hit, no read
    assert d.is_duplicate("bb", partition=3, offset=5, now_ms=602) is True
    assert reads == [12, 3]  # its entry (position, offset), then len("bb") + 1 bytes
    assert sorted(f.name for f in tmp_path.glob("*.entries")) == [
        "dedup-p0-s0.entries",
        "dedup-p0-s1.entries",
        "dedup-p3-s0.entries",
    ]
    assert d.expire(now_ms=TTL) == 2  # the first segments of both partitions
    assert sorted(f.name for f in tmp_path.glob("*.ids")) == ["dedup-p0-s1.ids"]
    d.forget_partitions([0])
    assert list(tmp_path.glob("*.ids")) == []
    assert len(d) == 0 and d.index_bytes() == 0
    assert (tmp_path / "unrelated.txt").exists()


def test_restore_rewrites_the_id_files(tmp_path: Path) -> None:
    d = Deduplicator(TTL, tmp_path / "a")
    d.check(["x", "y"], [4, 4], [0, 1], now_ms=0)
    value = d.drain_records()[4]
    r = Deduplicator(TTL, tmp_path / "b")
    r.check(["z"], [4], [9], now_ms=0)
    assert r.restore(4, [(0, value)], now_ms=1) == 2
    assert (tmp_path / "b" / "dedup-p4-s0.ids").read_bytes() == b"x\xffy\xff"
    entries = (tmp_path / "b" / "dedup-p4-s0.entries").read_bytes()
    assert entries == struct.pack("<IqIq", 0, 0, 2, 1)  # (position, offset) of each
    assert len(list((tmp_path / "b").iterdir())) == 2
    r.close()
    assert list((tmp_path / "b").iterdir()) == []


# --- partitions, legacy state, memory -------------------------------------------------------------


def test_forget_partitions_frees_the_index(make: Any) -> None:
    d = make(run_size=2)
    for p in range(3):
        d.check([f"{p}-{i}" for i in range(5)], [p] * 5, list(range(5)), now_ms=0)
    before = d.index_bytes()
    d.forget_partitions(iter([0, 2, 7]))  # any iterable; unknown partitions are a no-op
    assert len(d) == 5 and 0 < d.index_bytes() < before
    assert d.drain_records().keys() == {1}  # undrained ids of forgotten partitions are dropped
    assert d.is_duplicate("0-1", partition=0, offset=9, now_ms=1) is False  # indexed again
    assert d.is_duplicate("1-1", partition=1, offset=9, now_ms=1) is True


def test_index_is_12_bytes_per_sealed_id() -> None:
    d = Deduplicator(TTL, run_size=4)
    for t in range(4):
        d.check([f"{t}-{i}" for i in range(4)], [0] * 4, list(range(4 * t, 4 * t + 4)), now_ms=t)
    # four level-0 runs merged into one; one block table entry (16 B) per check() call
    seg = d._parts[0].segments[0]
    assert [r.level for r in seg.runs] == [1] and seg.open is None
    assert d.index_bytes() == 12 * 16 + 4 * 16
    assert d.check(["0-0", "3-3"], [0, 0], [0, 99], now_ms=5) == [False, True]


def test_restore_legacy(make: Any) -> None:
    d = make()
    items = [
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
    ) == [
        False,
        True,
        False,
        False,
        True,
        False,  # "e" was seen on partition 2
    ]
    assert d.is_duplicate("b", partition=2, offset=1, now_ms=1500) is False  # its TTL is over
    records = d.drain_records()
    assert decode_record(records[2]).ids == ["b", "e", "a", "b"]
    assert decode_record(records[2]).first_seen_ms.tolist() == [500, 500, 1300, 1500]
    assert d.restore_legacy([], now_ms=0) == 0
