"""Exact per-partition event-id deduplication with the index in RocksDB (``PULSE_STORE=rocksdb``).

:class:`RocksDeduplicator` decides like :class:`stream.core.dedup.Deduplicator`
and reads and writes the same changelog records, but keeps nothing per id in
Python memory (except the ids :meth:`~RocksDeduplicator.drain_records` has not
taken yet): the index is one RocksDB column family per time segment, inside the
worker's :class:`~stream.core.rocks_budget.RocksBudget`, so the process memory
stays within the budget however many ids it holds.

A key is the partition (4 bytes, big-endian) and the full UTF-8 id, so there
are no collisions; a value is the offset and the first-seen time (8 bytes each,
little-endian). The database is scratch space rebuilt from the changelog: it is
written without a WAL and wiped at start.

>>> import tempfile
>>> from stream.core.dedup import decode_record
>>> from stream.core.rocks_budget import RocksBudget
>>> tmp = tempfile.TemporaryDirectory()
>>> budget = RocksBudget(16 * 1024 * 1024)
>>> d = RocksDeduplicator(ttl_ms=1000, path=f"{tmp.name}/a", budget=budget)
>>> d.check(["e1", "e2", "e1"], partitions=[0, 0, 0], offsets=[5, 6, 7], now_ms=0)
[False, False, True]
>>> d.is_duplicate("e1", partition=0, offset=5, now_ms=20)  # redelivery of offset 5
False
>>> d.is_duplicate("e1", partition=1, offset=3, now_ms=30)  # another partition
False
>>> records = d.drain_records()
>>> sorted(records), decode_record(records[0]).ids
([0, 1], ['e1', 'e2'])
>>> fresh = RocksDeduplicator(ttl_ms=1000, path=f"{tmp.name}/b", budget=budget)
>>> fresh.restore(0, [(0, records[0])], now_ms=40)
2
>>> fresh.is_duplicate("e2", partition=0, offset=8, now_ms=50)
True
>>> d.expire(now_ms=2000), len(d)
(3, 0)
>>> d.close(), fresh.close(), tmp.cleanup()
(None, None, None)
"""

from __future__ import annotations

import os
import shutil
import struct
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import rocksdict

from stream.core.dedup import (
    _ENCODING,
    _END,
    DedupRecordError,
    _Block,
    _encode,
    _fingerprints,
    _Parsed,
)
from stream.core.rocks_budget import RocksBudget

__all__ = ["DedupRecordError", "RocksDeduplicator"]

_PAIR = struct.Struct("<qq")  # a value: offset, first-seen ms
_MAX_PARTITION = (1 << 31) - 1  # Kafka partitions are non-negative int32
_RESTORE_BATCH = 8192  # ids per WriteBatch while restoring

I64Array = npt.NDArray[np.int64]


def _prefix(partition: int) -> bytes:
    return partition.to_bytes(4, "big")


class _Segment:
    """One time slot ``[slot * segment_ms, (slot + 1) * segment_ms)``: a column family."""

    __slots__ = ("cf", "counts", "handle", "name", "slot")

    def __init__(self, db: rocksdict.Rdict, slot: int, options: rocksdict.Options) -> None:
        self.slot = slot
        self.name = f"s{slot}"
        self.cf = db.create_column_family(self.name, options)
        self.handle = db.get_column_family_handle(self.name)
        self.counts: dict[int, int] = {}  # partition -> ids written here


class RocksDeduplicator:
    """:class:`~stream.core.dedup.Deduplicator`'s decisions, with the index in RocksDB.

    Ids first seen at ``t`` go in the column family of time slot
    ``t // (ttl_ms / segments)``; :meth:`expire` drops a family once the newest
    id it may hold is ``ttl_ms`` old, so ids are remembered at least ``ttl_ms``
    and at most a segment more. A lookup asks every live family, newest first,
    with one multi-get per family per call; the first-seen time stored with the
    id decides, to the millisecond. ``path`` belongs to this deduplicator: what
    is there is deleted at start (and at :meth:`close`).
    """

    def __init__(
        self,
        ttl_ms: int,
        path: str | os.PathLike[str],
        budget: RocksBudget,
        *,
        segments: int = 8,
    ) -> None:
        if ttl_ms <= 0 or segments <= 0:
            raise ValueError("ttl_ms and segments must be positive")
        self.ttl_ms = ttl_ms
        self.segment_ms = max(1, ttl_ms // segments)
        self.path = Path(path)
        self.budget = budget
        self._db: rocksdict.Rdict | None = None
        self._segments: dict[int, _Segment] = {}  # slot -> segment
        self._newest_first: list[_Segment] = []
        self._pending: dict[int, list[_Block]] = {}  # partition -> first seen since the drain
        self._next_due = sys.maxsize  # no segment expires before this clock
        self._write = rocksdict.WriteOptions()
        # the changelog is the durable copy (a property: the stub calls it a method)
        self._write.disable_wal = True  # type: ignore[method-assign, assignment]
        self._open()

    # -------------------------------------------------------------- the database

    def _open(self) -> None:
        _wipe(self.path)
        self._db = rocksdict.Rdict(str(self.path), self._options())

    def _options(self) -> rocksdict.Options:
        opts = self.budget.options()
        opts.set_memtable_prefix_bloom_ratio(0.1)  # misses skip the memtables too
        opts.set_memtable_whole_key_filtering(True)
        return opts

    def _segment(self, seen_ms: int) -> _Segment:
        """The segment of ids first seen at ``seen_ms`` (created when missing)."""
        slot = seen_ms // self.segment_ms
        seg = self._segments.get(slot)
        if seg is None:
            if self._db is None:  # used again after close()
                self._open()
            assert self._db is not None
            seg = self._segments[slot] = _Segment(self._db, slot, self._options())
            self._newest_first = sorted(self._segments.values(), key=_slot, reverse=True)
            self._next_due = min(self._next_due, self._due(seg))
        return seg

    def _due(self, seg: _Segment) -> int:
        """When the newest id ``seg`` may hold is ``ttl_ms`` old."""
        return (seg.slot + 1) * self.segment_ms - 1 + self.ttl_ms

    # -------------------------------------------------------------- deciding

    def check(
        self, ids: Sequence[str], partitions: Sequence[int], offsets: Sequence[int], now_ms: int
    ) -> list[bool]:
        """Duplicate flags of records in arrival order; first sightings are remembered.

        A repeat inside the call is a duplicate of its first occurrence (unless
        it is the same partition and offset again). All first sightings go to
        RocksDB in one write batch.
        """
        n = len(ids)
        if len(partitions) != n or len(offsets) != n:
            raise ValueError(
                f"check() needs one partition and offset per id: got {n} ids, "
                f"{len(partitions)} partitions, {len(offsets)} offsets"
            )
        if n == 0:
            return []
        encoded = [i.encode(*_ENCODING) for i in ids]
        parts = np.asarray(partitions, dtype=np.int64)
        offs = np.asarray(offsets, dtype=np.int64)
        plist: list[int] = parts.tolist()
        single = plist[0]
        if (parts == single).all():
            _check_partition(single)
            pre = _prefix(single)
            keys = [pre + raw for raw in encoded]
        else:
            prefixes = {p: _prefix(_check_partition(p)) for p in set(plist)}
            keys = [prefixes[p] + raw for p, raw in zip(plist, encoded, strict=True)]
        now = int(now_ms)
        hit_at, hit_values, hit_slots = self._lookup(keys)
        repeats = len(set(keys)) != n
        new = np.ones(n, dtype=bool)
        overwrite = np.zeros(n, dtype=bool)  # a new sighting replacing one in its segment
        dup = [False] * n
        slot = now // self.segment_ms
        if hit_at:
            stored = np.frombuffer(b"".join(hit_values), "<i8").reshape(-1, 2)
            at = np.array(hit_at, dtype=np.intp)
            live = now - stored[:, 1] < self.ttl_ms
            overwrite[at] = ~live & (np.array(hit_slots) == slot)
            if not repeats:
                new[at[live]] = False
                flags = np.zeros(n, dtype=bool)
                flags[at] = live & (stored[:, 0] != offs[at])
                dup = flags.tolist()
        if repeats:
            self._decide_in_order(keys, offs, now, hit_at, hit_values, new, dup)
        if new.all():
            keep = None
        else:
            keep = np.flatnonzero(new)
            if not len(keep):
                return dup
        self._insert(keys, encoded, parts, offs, keep, overwrite, now)
        return dup

    def is_duplicate(self, event_id: str, partition: int, offset: int, now_ms: int) -> bool:
        """:meth:`check` of one record."""
        return self.check([event_id], [partition], [offset], now_ms)[0]

    def _lookup(self, keys: list[bytes]) -> tuple[list[int], list[bytes], list[int]]:
        """Indexes of the keys found, their values and slots (the newest segment holding each)."""
        at: list[int] = []
        values: list[bytes] = []
        slots: list[int] = []
        ask = keys
        where: Sequence[int] = range(len(keys))
        for seg in self._newest_first:
            got = _multi_get(seg.cf, ask)
            misses = got.count(None)
            if misses == len(got):
                continue
            left: list[int] = []
            for i, v in zip(where, got, strict=True):
                if v is None:
                    left.append(i)
                else:
                    at.append(i)
                    values.append(v)
                    slots.append(seg.slot)
            if not left:
                break
            ask, where = [keys[i] for i in left], left
        return at, values, slots

    def _decide_in_order(
        self,
        keys: list[bytes],
        offs: I64Array,
        now: int,
        hit_at: list[int],
        hit_values: list[bytes],
        new: npt.NDArray[np.bool_],
        dup: list[bool],
    ) -> None:
        """Decide a call with repeated keys record by record (only hits and repeats)."""
        counts: dict[bytes, int] = {}
        for k in keys:
            counts[k] = counts.get(k, 0) + 1
        stored = dict(zip(hit_at, hit_values, strict=True))
        fresh: dict[bytes, int] = {}  # first seen in this call -> offset
        for i, k in enumerate(keys):
            value = stored.get(i)
            if value is None and counts[k] == 1:
                continue
            offset = int(offs[i])
            first: int | None = None
            if value is not None:
                stored_offset, seen = _PAIR.unpack(value)
                if now - seen < self.ttl_ms:
                    first = stored_offset
            if first is None:
                first = fresh.get(k)
                if first is None:
                    fresh[k] = offset
                    continue
            new[i] = False
            dup[i] = offset != first

    def _insert(
        self,
        keys: list[bytes],
        encoded: list[bytes],
        parts: I64Array,
        offs: I64Array,
        keep: npt.NDArray[np.intp] | None,
        overwrite: npt.NDArray[np.bool_],
        now: int,
    ) -> None:
        """Write the first sightings ``keep`` (all if None) at ``now`` and queue them."""
        if keep is not None:
            keys = [keys[i] for i in keep.tolist()]
            encoded = [encoded[i] for i in keep.tolist()]
            parts, offs, overwrite = parts[keep], offs[keep], overwrite[keep]
        seg = self._segment(now)
        handle = seg.handle
        batch = rocksdict.WriteBatch(raw_mode=True)
        put = batch.put
        pack = _PAIR.pack
        for k, o in sorted(zip(keys, offs.tolist(), strict=True)):  # sorted: faster inserts
            put(k, pack(o, now), handle)
        assert self._db is not None
        self._db.write(batch, self._write)
        single = int(parts[0])
        if (parts == single).all():
            groups: Iterable[tuple[int, npt.NDArray[np.intp] | None]] = [(single, None)]
        else:
            groups = ((p, np.flatnonzero(parts == p)) for p in np.unique(parts).tolist())
        for p, idx in groups:
            if idx is None:
                raw, o, written = encoded, offs, len(encoded) - int(overwrite.sum())
            else:
                raw, o = [encoded[i] for i in idx.tolist()], offs[idx]
                written = len(idx) - int(overwrite[idx].sum())
            fps = _fingerprints(raw, max(map(len, raw)))
            self._pending.setdefault(p, []).append((now, fps, o, _END.join(raw) + _END))
            seg.counts[p] = seg.counts.get(p, 0) + written

    # -------------------------------------------------------------- expiry and state

    def expire(self, now_ms: int) -> int:
        """Drop segments whose newest possible id is ``ttl_ms`` old; return about how many ids.

        The count is of ids written to the dropped column families: an id
        written twice into one (restored twice, say) counts twice.

        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> d = RocksDeduplicator(100, f"{tmp.name}/d", RocksBudget(16 << 20), segments=4)
        >>> d.check(["a", "b"], [0, 0], [0, 1], now_ms=0)
        [False, False]
        >>> d.check(["c"], [0], [2], now_ms=30)
        [False]
        >>> d.expire(now_ms=123), d.expire(now_ms=124), d.expire(now_ms=149), len(d)
        (0, 2, 1, 0)
        >>> d.close(), tmp.cleanup()
        (None, None)
        """
        if now_ms < self._next_due:
            return 0
        gone = 0
        due = sys.maxsize
        for seg in list(self._segments.values()):
            if self._due(seg) <= now_ms:
                gone += sum(seg.counts.values())
                self._drop_segment(seg)
            else:
                due = min(due, self._due(seg))
        self._next_due = due
        return gone

    def _drop_segment(self, seg: _Segment) -> None:
        del self._segments[seg.slot]
        self._newest_first = [s for s in self._newest_first if s is not seg]
        del seg.cf, seg.handle  # release the family before the drop
        assert self._db is not None
        self._db.drop_column_family(seg.name)

    def drain_records(self) -> dict[int, bytes]:
        """Partition -> one changelog record of the ids first seen there since the last drain.

        The records are :class:`~stream.core.dedup.Deduplicator`'s: either class
        restores the other's.
        """
        out = {p: _encode(blocks) for p, blocks in self._pending.items() if blocks}
        self._pending = {}
        return out

    def restore(self, partition: int, records: Iterable[tuple[int, bytes]], now_ms: int) -> int:
        """Rebuild ``partition`` from its changelog records ``(timestamp_ms, value)`` in log order.

        Replaces what was there. Ids first seen ``ttl_ms`` or more before
        ``now_ms`` are skipped (by the first-seen time each record carries).
        Returns the ids restored; a bad record raises :class:`DedupRecordError`.
        """
        pre = _prefix(_check_partition(partition))
        self._drop(partition)
        writes = [rocksdict.WriteBatch(raw_mode=True)]
        try:
            return self._restore(partition, pre, records, now_ms, writes)
        finally:  # what was counted is written, also when a record is bad
            self._flush(writes)

    def _restore(
        self,
        partition: int,
        pre: bytes,
        records: Iterable[tuple[int, bytes]],
        now_ms: int,
        writes: list[rocksdict.WriteBatch],
    ) -> int:
        restored = 0
        for _, value in records:
            r = _Parsed(value)
            ids = bytes(r.ids).split(_END)
            offsets = (r.rel.astype(np.int64) + r.base).tolist()
            first = 0
            for seen, count in zip(r.seen.tolist(), r.counts.tolist(), strict=True):
                last, first = first, first + count
                if now_ms - seen >= self.ttl_ms or not count:
                    continue
                seg = self._segment(seen)
                handle, put = seg.handle, writes[0].put
                tail = seen.to_bytes(8, "little", signed=True)
                for raw, o in zip(ids[last:first], offsets[last:first], strict=True):
                    put(pre + raw, o.to_bytes(8, "little", signed=True) + tail, handle)
                seg.counts[partition] = seg.counts.get(partition, 0) + count
                restored += count
            if len(writes[0]) >= _RESTORE_BATCH:
                self._flush(writes)
        return restored

    def _flush(self, writes: list[rocksdict.WriteBatch]) -> None:
        """Write the batch ``writes[0]`` (if not empty) and put a new one there."""
        if len(writes[0]):
            assert self._db is not None
            self._db.write(writes[0], self._write)
            writes[0] = rocksdict.WriteBatch(raw_mode=True)

    def restore_legacy(self, items: Iterable[tuple[str, list[int]]], now_ms: int) -> int:
        """Load the previous release's ``event_id -> [first_seen_ms, partition, offset]`` state.

        Expired ids are skipped; the others are added to what is there and also
        queued for the next :meth:`drain_records`, so the new changelog holds them.
        """
        by_part: dict[int, list[tuple[int, bytes, int]]] = {}
        for event_id, (seen, partition, offset, *_) in items:
            if now_ms - seen < self.ttl_ms:
                raw = event_id.encode(*_ENCODING)
                by_part.setdefault(int(partition), []).append((int(seen), raw, int(offset)))
        restored = 0
        for partition, rows in by_part.items():
            _check_partition(partition)
            rows.sort(key=lambda row: row[0])
            pre = _prefix(partition)
            lo = 0
            while lo < len(rows):
                hi = lo
                seen = rows[lo][0]
                while hi < len(rows) and rows[hi][0] == seen:
                    hi += 1
                encoded = [row[1] for row in rows[lo:hi]]
                offs = np.array([row[2] for row in rows[lo:hi]], dtype=np.int64)
                parts = np.full(hi - lo, partition, dtype=np.int64)
                keys = [pre + raw for raw in encoded]
                no_overwrite = np.zeros(hi - lo, dtype=bool)
                self._insert(keys, encoded, parts, offs, None, no_overwrite, seen)
                restored += hi - lo
                lo = hi
        return restored

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        """Drop the index and undrained ids of partitions this worker no longer owns.

        Call :meth:`drain_records` first if their undrained ids must still be written.
        """
        for p in partitions:
            self._drop(p)

    def _drop(self, partition: int) -> None:
        self._pending.pop(partition, None)
        if not 0 <= partition <= _MAX_PARTITION:
            return
        begin, end = _prefix(partition), _prefix(partition + 1)
        for seg in self._segments.values():
            if seg.counts.pop(partition, None) is not None:
                seg.cf.delete_range(begin, end, self._write)

    def close(self) -> None:
        """Forget every partition, close the database and delete its files.

        The deduplicator may be used again (with an empty index).
        """
        self._pending = {}
        self._segments, self._newest_first = {}, []
        self._next_due = sys.maxsize
        db, self._db = self._db, None
        if db is not None:
            db.close()
            del db
            _wipe(self.path)

    def __len__(self) -> int:
        """Ids held (those written by :meth:`check` exactly; restores count ids as written)."""
        return sum(sum(seg.counts.values()) for seg in self._segments.values())

    def index_bytes(self) -> int:
        """Bytes in the budget's shared cache (memtables, blocks, indexes, filters).

        The cache is shared with the other databases of the budget: this is an
        upper bound of what the index holds in memory; 0 when closed.
        """
        return self.budget.usage() if self._db is not None else 0


def _multi_get(cf: rocksdict.Rdict, keys: list[bytes]) -> list[bytes | None]:
    return cast("list[bytes | None]", cf.get(cast(Any, keys)))


def _slot(seg: _Segment) -> int:
    return seg.slot


def _check_partition(partition: int) -> int:
    if not 0 <= partition <= _MAX_PARTITION:
        raise ValueError(f"partition {partition} is not a Kafka partition (0 to {_MAX_PARTITION})")
    return partition


def _wipe(path: Path) -> None:
    """Make ``path`` an empty directory."""
    path.mkdir(parents=True, exist_ok=True)
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
