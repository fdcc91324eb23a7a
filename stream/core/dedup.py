"""Exact per-partition event-id deduplication in about 12 B of memory per id.

A repeat of an ``event_id`` on the same partition within ``ttl_ms`` of its first
sighting is a duplicate, except the *same record* (same partition and offset)
delivered again after a crash, which must be processed again rather than lost.
Lookups are per partition: events are keyed by user, so copies share one.

Memory holds only a 64-bit :func:`fingerprint` and an ordinal per id (sorted
numpy runs per time segment, plus a small dict for the newest ids); the full
ids, and each id's record offset, live in append-only files per partition and
segment (or ``bytearray`` s without ``id_dir``) and are read only on a
fingerprint hit, so a collision never drops a real event. The changelog holds one record per
partition per :meth:`Deduplicator.drain_records`, which
:meth:`Deduplicator.restore` loads with numpy, without a loop per id.

>>> d = Deduplicator(ttl_ms=1000)
>>> d.check(["e1", "e2", "e1"], partitions=[0, 0, 0], offsets=[5, 6, 7], now_ms=0)
[False, False, True]
>>> d.is_duplicate("e1", partition=0, offset=5, now_ms=20)  # redelivery of offset 5
False
>>> d.is_duplicate("e1", partition=1, offset=3, now_ms=30)  # another partition
False
>>> records = d.drain_records()
>>> sorted(records), decode_record(records[0]).ids
([0, 1], ['e1', 'e2'])
>>> fresh = Deduplicator(ttl_ms=1000)
>>> fresh.restore(0, [(0, records[0])], now_ms=40)
2
>>> fresh.is_duplicate("e2", partition=0, offset=8, now_ms=50)
True
>>> d.expire(now_ms=2000), len(d)
(3, 0)
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
import zlib
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from stream.core.errors import PulseError

__all__ = [
    "DedupIndex",
    "DedupRecord",
    "DedupRecordError",
    "Deduplicator",
    "decode_record",
    "fingerprint",
]

_VERSION = 1  # offsets relative to the base offset as u32
_VERSION_WIDE = 2  # as u64, when the offsets of one drain span 2**32 or more
# version, ids, blocks, base offset, bytes of ids; then a CRC-32 of all the rest
_HEAD = struct.Struct("<BIIqI")
_HEADER_SIZE = _HEAD.size + 4
_END = b"\xff"  # ends every stored id: 0xFF is never a byte of UTF-8
_U32 = 1 << 32
_NEVER = 1 << 30  # level of runs that are never merged again
_FANOUT = 4
_M64 = (1 << 64) - 1
_ENCODING = ("utf-8", "surrogatepass")
_FIX = (
    "the dedup changelog holds a record this release did not write or that was "
    "corrupted: check the topic (and the Pulse version that wrote it), or delete "
    "the changelog topic to start with an empty index (repeats of ids seen before "
    "then pass once)"
)

U64Array = npt.NDArray[np.uint64]
I64Array = npt.NDArray[np.int64]
U32Array = npt.NDArray[np.uint32]


class DedupRecordError(PulseError, ValueError):
    """A dedup changelog record does not decode (truncated, corrupted, unknown version)."""


# ------------------------------------------------------------------ fingerprints


def _splitmix64(count: int) -> list[int]:
    out, x = [], 0
    for _ in range(count):
        x = (x + 0x9E3779B97F4A7C15) & _M64
        z = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        out.append((z ^ (z >> 31)) | 1)  # odd: multiplying by it is a bijection
    return out


_KEYS = np.array(_splitmix64(64), dtype=np.uint64)  # one per 8-byte word of an id


def _fmix(x: U64Array) -> None:
    """MurmurHash3's 64-bit finalizer, in place (a bijection with ``0 -> 0``)."""
    x ^= x >> 33
    x *= 0xFF51AFD7ED558CCD
    x ^= x >> 33
    x *= 0xC4CEB9FE1A85EC53
    x ^= x >> 33


def _fingerprints(encoded: Sequence[bytes], width: int) -> U64Array:
    """:func:`fingerprint` of UTF-8 ids no longer than ``width`` bytes, vectorised."""
    global _KEYS
    words = max(1, -(-width // 8))
    if words > len(_KEYS):
        _KEYS = np.array(_splitmix64(words), dtype=np.uint64)
    x = np.array(encoded, dtype=f"S{8 * words}").view("<u8").reshape(len(encoded), words)
    x = x * _KEYS[:words]  # zero padding stays zero, so the width does not matter
    _fmix(x)
    h: U64Array = x.sum(axis=1, dtype=np.uint64)
    _fmix(h)
    return h


def fingerprint(event_id: str) -> int:
    """A 64-bit hash of the UTF-8 id, the same in every process and release.

    Each 8-byte little-endian word is multiplied by its own odd constant and
    mixed; the sum is mixed again. Stored in changelog records, so it must never
    change without a new record version.

    >>> fingerprint("e1") == fingerprint("e1") != fingerprint("e2")
    True
    >>> fingerprint("0b7e6c1e-2f1d-4a8e-9f3a-3c5d2e1f0a9b")
    12945541676339254308
    """
    raw = event_id.encode(*_ENCODING)
    return int(_fingerprints([raw], len(raw))[0])


# ------------------------------------------------------------------ log records


@dataclass(frozen=True)
class DedupRecord:
    """One decoded changelog record: ids first seen on a partition between two drains.

    ``seen_ms`` is the latest first sighting in it (nothing in the record is
    remembered once ``now - seen_ms >= ttl``); ``first_seen_ms`` has each id's.
    """

    seen_ms: int
    base_offset: int
    fingerprints: U64Array
    offsets: I64Array
    ids: list[str]
    first_seen_ms: I64Array


class _Parsed:
    """The arrays of a record, validated, as views of its bytes."""

    __slots__ = ("base", "counts", "ends", "fps", "ids", "rel", "seen")

    def __init__(self, value: bytes) -> None:
        size = len(value)
        if size < _HEADER_SIZE:
            raise DedupRecordError(
                f"dedup record truncated: {size} bytes, a record has at least "
                f"{_HEADER_SIZE}; {_FIX}"
            )
        version, n, blocks, base, nbytes = _HEAD.unpack_from(value)
        if version not in (_VERSION, _VERSION_WIDE):
            raise DedupRecordError(
                f"unknown dedup record version {version} (this release reads "
                f"{_VERSION} and {_VERSION_WIDE}): run the Pulse release that wrote it, or {_FIX}"
            )
        width = 4 if version == _VERSION else 8
        expected = _HEADER_SIZE + 12 * blocks + (8 + width) * n + nbytes
        if size != expected:
            what = "truncated" if size < expected else f"{size - expected} bytes too long"
            raise DedupRecordError(
                f"dedup record {what}: its header announces {n} ids in {blocks} blocks "
                f"and {nbytes} bytes of ids ({expected} bytes), it has {size}; {_FIX}"
            )
        crc = int.from_bytes(value[_HEAD.size : _HEADER_SIZE], "little")
        body = memoryview(value)[_HEADER_SIZE:]
        if zlib.crc32(body, zlib.crc32(memoryview(value)[: _HEAD.size])) != crc:
            raise DedupRecordError(f"dedup record fails its checksum; {_FIX}")
        at = _HEADER_SIZE
        self.seen: I64Array = np.frombuffer(value, "<i8", blocks, at)
        self.counts: U32Array = np.frombuffer(value, "<u4", blocks, at + 8 * blocks)
        at += 12 * blocks
        self.fps: U64Array = np.frombuffer(value, "<u8", n, at)
        self.rel: npt.NDArray[np.uint32 | np.uint64] = np.frombuffer(
            value, f"<u{width}", n, at + 8 * n
        )
        at += (8 + width) * n
        self.ids = body[at - _HEADER_SIZE :]
        self.ends: I64Array = np.flatnonzero(np.frombuffer(value, np.uint8, nbytes, at) == 0xFF)
        self.base = base
        if n == 0 or int(self.counts.sum()) != n:
            raise DedupRecordError(
                f"dedup record has inconsistent lengths: {n} ids, block sizes sum to "
                f"{int(self.counts.sum())} (a record holds at least one id); {_FIX}"
            )
        if len(self.ends) != n or self.ends[-1] != nbytes - 1:
            raise DedupRecordError(
                f"dedup record has inconsistent lengths: {n} ids announced, "
                f"{len(self.ends)} found in its {nbytes} bytes of ids; {_FIX}"
            )


def decode_record(value: bytes) -> DedupRecord:
    """Decode a record of :meth:`Deduplicator.drain_records`; :class:`DedupRecordError` if bad.

    >>> d = Deduplicator(ttl_ms=60_000)
    >>> d.check(["a", "bc"], [3, 3], [100, 104], now_ms=7)
    [False, False]
    >>> r = decode_record(d.drain_records()[3])
    >>> r.ids, r.offsets.tolist(), r.base_offset, r.seen_ms
    (['a', 'bc'], [100, 104], 100, 7)
    >>> decode_record(b"\\x09" + bytes(24))
    Traceback (most recent call last):
    ...
    stream.core.dedup.DedupRecordError: unknown dedup record version 9 ...
    """
    p = _Parsed(value)
    try:
        ids = [raw.decode(*_ENCODING) for raw in bytes(p.ids[:-1]).split(_END)]
    except UnicodeDecodeError as exc:
        raise DedupRecordError(
            f"dedup record holds an id that is not UTF-8 ({exc}); {_FIX}"
        ) from exc
    return DedupRecord(
        seen_ms=int(p.seen.max()),
        base_offset=p.base,
        fingerprints=p.fps.astype(np.uint64),
        offsets=p.rel.astype(np.int64) + p.base,
        ids=ids,
        first_seen_ms=np.repeat(p.seen.astype(np.int64), p.counts.astype(np.int64)),
    )


# A block of ids first seen at one instant: (seen_ms, fingerprints, offsets, ids + 0xFF each).
_Block = tuple[int, U64Array, I64Array, bytes]


def _encode(blocks: list[_Block]) -> bytes:
    seen: list[int] = []
    counts: list[int] = []
    for ms, fps, _, _ in blocks:
        if seen and seen[-1] == ms:
            counts[-1] += len(fps)
        else:
            seen.append(ms)
            counts.append(len(fps))
    fps = np.concatenate([b[1] for b in blocks])
    offsets = np.concatenate([b[2] for b in blocks])
    ids = b"".join([b[3] for b in blocks])
    base = int(offsets.min())
    rel = offsets - base
    version = _VERSION if int(rel.max()) < _U32 else _VERSION_WIDE
    head = _HEAD.pack(version, len(fps), len(seen), base, len(ids))
    body = b"".join(
        [
            np.array(seen, "<i8").tobytes(),
            np.array(counts, "<u4").tobytes(),
            fps.astype("<u8", copy=False).tobytes(),
            rel.astype("<u4" if version == _VERSION else "<u8").tobytes(),
            ids,
        ]
    )
    crc = zlib.crc32(body, zlib.crc32(head))
    return head + crc.to_bytes(4, "little") + body


# ------------------------------------------------------------------ the index


# an entry: where an id is stored, the offset of its record
_ENTRY = np.dtype([("pos", "<u4"), ("offset", "<i8")])
_ENTRY_STRUCT = struct.Struct("<Iq")


class _Run:
    """Sorted fingerprints with the ordinals of their entries in the segment."""

    __slots__ = ("fps", "level", "ords")

    def __init__(self, fps: U64Array, ords: U32Array, level: int) -> None:
        order = np.argsort(fps, kind="stable")  # equal fingerprints stay in ordinal order
        self.fps: U64Array = fps[order]
        self.ords: U32Array = ords[order]
        self.level = level


def _merge(runs: list[_Run], level: int) -> _Run:
    """One run of runs (a merge of sorted runs: timsort)."""
    fps = np.concatenate([r.fps for r in runs])
    return _Run(fps, np.concatenate([r.ords for r in runs]), level)


class _Open:
    """The newest ids of a segment: fingerprint -> ordinal(s), from ordinal ``first`` on."""

    __slots__ = ("first", "fps", "index")

    def __init__(self, first: int) -> None:
        self.first = first
        self.index: dict[int, int | list[int]] = {}
        self.fps = array("Q")


class _Store:
    """An append-only byte store: a file (written with ``os.write``, read with
    ``os.pread``) or, without a path, a ``bytearray``."""

    __slots__ = ("buf", "fd", "path", "size")

    def __init__(self, path: Path | None) -> None:
        self.path, self.size = path, 0
        self.buf: bytearray | None = None
        self.fd = -1
        if path is None:
            self.buf = bytearray()
        else:
            flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
            self.fd = os.open(path, flags, 0o600)

    def append(self, data: bytes | memoryview) -> int:
        """Store ``data``; return where it starts."""
        at = self.size
        if self.buf is not None:
            self.buf += data
        else:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
        self.size += len(data)
        return at

    def read(self, at: int, size: int) -> bytes:
        if self.buf is not None:
            return bytes(self.buf[at : at + size])
        return os.pread(self.fd, size, at)

    def close(self) -> None:
        self.buf = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


class _Segment:
    """Ids first seen in one time slot of one partition, and where their full ids are.

    Entry ``k`` (the k-th id stored, its *ordinal*) is a fingerprint in memory
    and, in ``entries``, the position of its id in ``ids`` and the offset of
    its record: only 12 B per id stay in memory (fingerprint and ordinal).
    """

    __slots__ = (
        "block_ord",
        "block_seen",
        "count",
        "entries",
        "ids",
        "max_seen",
        "open",
        "runs",
        "seq",
        "start",
    )

    def __init__(self, seq: int, start: int, path: Path | None) -> None:
        self.seq, self.start = seq, start
        self.max_seen = start
        self.runs: list[_Run] = []
        self.open: _Open | None = None
        self.count = 0
        self.block_ord = array("q")  # the first ordinal of each block of ids, ascending
        self.block_seen = array("q")  # and when they were first seen
        self.ids = _Store(path)
        self.entries = _Store(None if path is None else path.with_suffix(".entries"))

    @property
    def size(self) -> int:
        """Bytes of ids stored."""
        return self.ids.size

    def append(
        self, ids: bytes | memoryview, starts: I64Array, offsets: I64Array, seen_ms: int
    ) -> int:
        """Store a block of ids (each followed by 0xFF; ``starts`` where each begins in
        ``ids``) first seen at ``seen_ms``; return the ordinal of the first."""
        at = self.ids.append(ids)
        entries = np.empty(len(starts), _ENTRY)
        entries["pos"] = starts + at
        entries["offset"] = offsets
        self.entries.append(entries.tobytes())
        first = self.count
        self.block_ord.append(first)
        self.block_seen.append(seen_ms)
        self.max_seen = max(self.max_seen, seen_ms)
        self.count += len(starts)
        return first

    def entry(self, ordinal: int) -> tuple[int, int]:
        """(position of the id, offset of its record) of entry ``ordinal``."""
        size = _ENTRY_STRUCT.size
        pos, offset = _ENTRY_STRUCT.unpack(self.entries.read(size * ordinal, size))
        return pos, offset

    def holds(self, pos: int, key: bytes) -> bool:
        """Whether the id stored at ``pos`` is ``key`` (an id followed by 0xFF)."""
        return self.ids.read(pos, len(key)) == key

    def seen_at(self, ordinal: int) -> int:
        return self.block_seen[bisect_right(self.block_ord, ordinal) - 1]

    def add_open(self, fps: U64Array, keys: list[int], first: int, clash: bool) -> None:
        """Index entries ``first`` on in the open dict (``clash``: a key may be there)."""
        o = self.open
        if o is None:
            o = self.open = _Open(first)
        o.fps.frombytes(fps.astype(np.uint64).tobytes())
        index = o.index
        if not clash:
            index.update(zip(keys, range(first, first + len(keys)), strict=True))
            return
        for j, k in enumerate(keys, first):
            v = index.get(k)
            if v is None:
                index[k] = j
            elif isinstance(v, list):
                v.append(j)
            else:
                index[k] = [v, j]

    def seal(self) -> None:
        """Turn the open ids into a sorted run; merge runs ``_FANOUT`` at a time."""
        o, self.open = self.open, None
        if o is None or not o.fps:
            return
        ords = np.arange(o.first, o.first + len(o.fps), dtype=np.uint32)
        runs = self.runs
        runs.append(_Run(np.frombuffer(o.fps, np.uint64), ords, 0))
        while len(runs) >= _FANOUT and len({r.level for r in runs[-_FANOUT:]}) == 1:
            last = runs[-_FANOUT:]
            if last[0].level >= _NEVER:
                break
            del runs[-_FANOUT:]
            runs.append(_merge(last, last[0].level + 1))

    def compact(self) -> None:
        """Seal and merge all runs into one: the segment takes no more ids."""
        self.seal()
        if len(self.runs) > 1:
            self.runs = [_merge(self.runs, _NEVER)]

    def index_bytes(self) -> int:
        n = sum(r.fps.nbytes + r.ords.nbytes for r in self.runs)
        n += 16 * len(self.block_ord)
        o = self.open
        if o is not None:
            n += 8 * len(o.fps) + sys.getsizeof(o.index)
            n += len(o.index) * (sys.getsizeof(_M64) + sys.getsizeof(_U32))  # key, ordinal
        return n

    def close(self) -> None:
        self.runs, self.open = [], None
        self.ids.close()
        self.entries.close()


class _Partition:
    __slots__ = ("pending", "segments", "seq")

    def __init__(self) -> None:
        self.segments: list[_Segment] = []  # oldest first
        self.pending: list[_Block] = []  # first seen since the last drain
        self.seq = 0


class DedupIndex(Protocol):
    """What the ingest stage needs of a dedup index: :class:`Deduplicator` (in memory)
    or ``stream.core.dedup_rocks.RocksDeduplicator`` (``PULSE_STORE=rocksdb``)."""

    def check(
        self, ids: Sequence[str], partitions: Sequence[int], offsets: Sequence[int], now_ms: int
    ) -> list[bool]: ...
    def expire(self, now_ms: int) -> int: ...
    def drain_records(self) -> dict[int, bytes]: ...
    def restore(self, partition: int, records: Iterable[tuple[int, bytes]], now_ms: int) -> int: ...
    def restore_legacy(self, items: Iterable[tuple[str, list[int]]], now_ms: int) -> int: ...
    def forget_partitions(self, partitions: Iterable[int]) -> None: ...
    def close(self) -> None: ...
    def __len__(self) -> int: ...


class Deduplicator:
    """Decide duplicates per partition; remember ids for at least ``ttl_ms``.

    Ids go in time segments ``ttl_ms / segments`` long; :meth:`expire` drops a
    segment once its newest id is ``ttl_ms`` old. Whether a repeat is a
    duplicate is decided on its first sighting, to the millisecond. With
    ``id_dir`` the full ids are in files ``dedup-p<partition>-s<n>.ids`` there,
    their positions and record offsets in ``.entries`` files (the directory
    belongs to this deduplicator: such files left by an earlier process are
    deleted); without, in memory. ``run_size`` new ids are kept in a
    dict before they are sorted into a numpy run.
    """

    def __init__(
        self,
        ttl_ms: int,
        id_dir: str | os.PathLike[str] | None = None,
        *,
        run_size: int = 65536,
        segments: int = 8,
    ) -> None:
        if ttl_ms <= 0 or run_size <= 0 or segments <= 0:
            raise ValueError("ttl_ms, run_size and segments must be positive")
        self.ttl_ms = ttl_ms
        self.segment_ms = max(1, ttl_ms // segments)
        self.run_size = run_size
        self.id_dir = None if id_dir is None else Path(id_dir)
        if self.id_dir is not None:
            self.id_dir.mkdir(parents=True, exist_ok=True)
            for stale in self.id_dir.glob("dedup-p*-s*.*"):
                stale.unlink()
        self._parts: dict[int, _Partition] = {}
        self._next_due = sys.maxsize  # no segment expires before this clock

    # -------------------------------------------------------------- deciding

    def check(
        self, ids: Sequence[str], partitions: Sequence[int], offsets: Sequence[int], now_ms: int
    ) -> list[bool]:
        """Duplicate flags of records in arrival order; first sightings are remembered.

        A repeat inside the call is a duplicate of its first occurrence (unless
        it is the same partition and offset again).

        >>> d = Deduplicator(ttl_ms=100)
        >>> d.check(["a", "b", "a", "a"], [0, 1, 1, 0], [1, 1, 2, 3], now_ms=0)
        [False, False, False, True]
        >>> d.check(["a", "a"], [0, 0], [1, 4], now_ms=99), d.check(["a"], [0], [4], now_ms=100)
        ([False, True], [False])
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
        joined = _END.join(encoded) + _END
        ends = np.flatnonzero(np.frombuffer(joined, np.uint8) == 0xFF)
        lengths = np.diff(ends, prepend=-1) - 1
        fps = _fingerprints(encoded, int(lengths.max()))
        offs = np.asarray(offsets, dtype=np.int64)
        parts = np.asarray(partitions, dtype=np.int64)
        dup = [False] * n
        first = int(parts[0])
        if (parts == first).all():
            self._check(first, None, encoded, joined, fps, offs, lengths, now_ms, dup)
        else:
            for p in np.unique(parts).tolist():
                idx = np.flatnonzero(parts == p)
                self._check(p, idx, encoded, joined, fps, offs, lengths, now_ms, dup)
        return dup

    def is_duplicate(self, event_id: str, partition: int, offset: int, now_ms: int) -> bool:
        """:meth:`check` of one record."""
        return self.check([event_id], [partition], [offset], now_ms)[0]

    def _check(
        self,
        partition: int,
        idx: npt.NDArray[np.intp] | None,
        encoded: list[bytes],
        joined: bytes,
        fps: U64Array,
        offs: I64Array,
        lengths: I64Array,
        now: int,
        dup: list[bool],
    ) -> None:
        """Decide the records ``idx`` (all if None) of one partition, into ``dup``."""
        if idx is not None:
            fps, offs, lengths = fps[idx], offs[idx], lengths[idx]
        at = idx.tolist() if idx is not None else range(len(fps))  # local -> call index
        state = self._parts.get(partition)
        if state is None:
            state = self._parts[partition] = _Partition()
        keys = fps.tolist()
        keyset = set(keys)
        repeats = len(keyset) != len(keys)
        # fingerprint hits: local index -> [(segment seq, ordinal, segment)]
        hits: dict[int, list[tuple[int, int, _Segment]]] = {}
        clash = False  # a new id may share a fingerprint in the open dict
        for seg in state.segments:
            o = seg.open
            if o is not None and o.index:
                common = o.index.keys() & keyset
                if common:
                    clash = True
                    for i, k in enumerate(keys):
                        if k in common:
                            v = o.index[k]
                            for j in v if isinstance(v, list) else (v,):
                                hits.setdefault(i, []).append((seg.seq, j, seg))
            for run in seg.runs:
                rf = run.fps
                where = np.searchsorted(rf, fps)
                np.minimum(where, len(rf) - 1, out=where)
                found = rf[where] == fps
                if found.any():
                    for i in np.flatnonzero(found).tolist():
                        k, key = int(where[i]), keys[i]
                        while k < len(rf) and rf[k] == key:
                            hits.setdefault(i, []).append((seg.seq, int(run.ords[k]), seg))
                            k += 1
        special: set[int] = set(hits)
        if repeats:
            _, inverse, counts = np.unique(fps, return_inverse=True, return_counts=True)
            special.update(np.flatnonzero(counts[inverse] > 1).tolist())
        if special:
            new = np.ones(len(keys), dtype=bool)
            fresh: dict[bytes, int] = {}  # first seen in this call -> offset
            ttl = self.ttl_ms
            for i in sorted(special):
                raw, offset = encoded[at[i]], int(offs[i])
                first: int | None = None
                entries = hits.get(i)
                if entries:
                    key = raw + _END
                    for _, ordinal, seg in sorted(entries, reverse=True, key=_newest):
                        pos, stored_offset = seg.entry(ordinal)
                        if seg.holds(pos, key):  # the newest sighting decides
                            if now - seg.seen_at(ordinal) < ttl:
                                first = stored_offset
                            break
                if first is None:
                    first = fresh.get(raw)
                    if first is None:
                        fresh[raw] = offset
                        continue
                new[i] = False
                dup[at[i]] = offset != first
            if not new.all():
                keep = np.flatnonzero(new)
                if not len(keep):
                    return
                fps, offs, lengths = fps[keep], offs[keep], lengths[keep]
                keys = fps.tolist()
                joined = _END.join([encoded[at[i]] for i in keep.tolist()]) + _END
                clash = True
            elif idx is not None:
                joined = _END.join([encoded[i] for i in at]) + _END
        elif idx is not None:
            joined = _END.join([encoded[i] for i in at]) + _END
        self._insert(state, partition, fps, keys, offs, lengths, joined, now, clash or repeats)

    def _insert(
        self,
        state: _Partition,
        partition: int,
        fps: U64Array,
        keys: list[int],
        offs: I64Array,
        lengths: I64Array,
        joined: bytes,
        now: int,
        clash: bool,
    ) -> None:
        """Remember first sightings at ``now`` (``joined``: the ids, each followed by 0xFF)."""
        seg = self._segment(state, partition, now, len(joined))
        sizes = lengths + 1
        first = seg.append(joined, np.cumsum(sizes) - sizes, offs, now)
        seg.add_open(fps, keys, first, clash)
        state.pending.append((now, fps, offs, joined))
        if seg.open is not None and len(seg.open.fps) >= self.run_size:
            seg.seal()

    def _segment(self, state: _Partition, partition: int, seen_ms: int, nbytes: int) -> _Segment:
        """The segment to store ids first seen at ``seen_ms`` in (a new one when due)."""
        if nbytes >= _U32:
            raise ValueError("a batch holds 4 GiB of ids or more: split it")
        if state.segments:
            seg = state.segments[-1]
            # also when the clock stepped back: ids keep their own first-seen time
            if seen_ms < seg.start + self.segment_ms and seg.size + nbytes < _U32:
                return seg
            seg.compact()
        path = None
        if self.id_dir is not None:
            path = self.id_dir / f"dedup-p{partition}-s{state.seq}.ids"
        seg = _Segment(state.seq, seen_ms - seen_ms % self.segment_ms, path)
        seg.max_seen = seen_ms
        state.seq += 1
        state.segments.append(seg)
        self._next_due = min(self._next_due, seen_ms + self.ttl_ms)
        return seg

    # -------------------------------------------------------------- expiry and state

    def expire(self, now_ms: int) -> int:
        """Drop segments whose newest id is ``ttl_ms`` old; return how many ids that forgets.

        >>> d = Deduplicator(ttl_ms=100, segments=4)
        >>> d.check(["a", "b"], [0, 0], [0, 1], now_ms=0)
        [False, False]
        >>> d.check(["c"], [0], [2], now_ms=30)
        [False]
        >>> d.expire(now_ms=99), d.expire(now_ms=100), d.expire(now_ms=130), len(d)
        (0, 2, 1, 0)
        """
        if now_ms < self._next_due:
            return 0
        gone = 0
        due = sys.maxsize
        cutoff = now_ms - self.ttl_ms
        for partition in list(self._parts):
            state = self._parts[partition]
            keep = []
            for seg in state.segments:
                if seg.max_seen <= cutoff:
                    gone += seg.count
                    seg.close()
                else:
                    keep.append(seg)
                    due = min(due, seg.max_seen + self.ttl_ms)
            state.segments = keep
            if not keep and not state.pending:
                del self._parts[partition]
        self._next_due = due
        return gone

    def drain_records(self) -> dict[int, bytes]:
        """Partition -> one changelog record of the ids first seen there since the last drain."""
        out = {}
        for p, state in self._parts.items():
            if state.pending:
                out[p] = _encode(state.pending)
                state.pending = []
        return out

    def restore(self, partition: int, records: Iterable[tuple[int, bytes]], now_ms: int) -> int:
        """Rebuild ``partition`` from its changelog records ``(timestamp_ms, value)`` in log order.

        Replaces what was there. Ids first seen ``ttl_ms`` or more before
        ``now_ms`` are skipped (by the first-seen time each record carries: the
        Kafka timestamp may come from another clock). Returns the ids restored.
        """
        self._drop(partition)
        state = self._parts[partition] = _Partition()
        chunks: list[tuple[U64Array, U32Array]] = []
        seg: _Segment | None = None
        restored = 0
        for _, value in records:
            r = _Parsed(value)
            first = 0
            for seen, count in zip(r.seen.tolist(), r.counts.tolist(), strict=True):
                last, first = first, first + count
                if now_ms - seen >= self.ttl_ms or not count:
                    continue
                lo = int(r.ends[last - 1]) + 1 if last else 0
                hi = int(r.ends[first - 1]) + 1
                target = self._segment(state, partition, seen, hi - lo)
                if target is not seg:
                    if seg is not None:
                        _finish(seg, chunks)
                    seg = target
                starts = np.empty(count, np.int64)
                starts[0] = 0
                starts[1:] = r.ends[last : first - 1] + 1 - lo
                offsets = r.rel[last:first].astype(np.int64) + r.base
                ordinal = seg.append(r.ids[lo:hi], starts, offsets, seen)
                ords = np.arange(ordinal, ordinal + count, dtype=np.uint32)
                chunks.append((r.fps[last:first].astype(np.uint64), ords))
                restored += count
        if seg is not None:
            _finish(seg, chunks)
        if not state.segments:
            del self._parts[partition]
        return restored

    def restore_legacy(self, items: Iterable[tuple[str, list[int]]], now_ms: int) -> int:
        """Load the previous release's ``event_id -> [first_seen_ms, partition, offset]`` state.

        Expired ids are skipped; the others are added to what is there and also
        queued for the next :meth:`drain_records`, so the new changelog holds them.

        >>> d = Deduplicator(ttl_ms=1000)
        >>> d.restore_legacy([("a", [0, 2, 7]), ("b", [500, 2, 8]), ("c", [900, 0, 1])], 1200)
        2
        >>> d.is_duplicate("b", 2, 9, 1300), d.is_duplicate("b", 2, 8, 1300)
        (True, False)
        >>> sorted(d.drain_records())
        [0, 2]
        """
        by_part: dict[int, list[tuple[int, bytes, int]]] = {}
        for event_id, (seen, partition, offset, *_) in items:
            if now_ms - seen < self.ttl_ms:
                raw = event_id.encode(*_ENCODING)
                by_part.setdefault(int(partition), []).append((int(seen), raw, int(offset)))
        restored = 0
        for partition, rows in by_part.items():
            rows.sort(key=lambda row: row[0])
            state = self._parts.get(partition)
            if state is None:
                state = self._parts[partition] = _Partition()
            lo = 0
            while lo < len(rows):
                hi = lo
                seen = rows[lo][0]
                while hi < len(rows) and rows[hi][0] == seen:
                    hi += 1
                encoded = [row[1] for row in rows[lo:hi]]
                lengths = np.array([len(raw) for raw in encoded], dtype=np.int64)
                fps = _fingerprints(encoded, int(lengths.max()))
                offs = np.array([row[2] for row in rows[lo:hi]], dtype=np.int64)
                joined = _END.join(encoded) + _END
                self._insert(state, partition, fps, fps.tolist(), offs, lengths, joined, seen, True)
                restored += hi - lo
                lo = hi
        return restored

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        """Drop the index, id files and undrained ids of partitions this worker no longer owns.

        Call :meth:`drain_records` first if their undrained ids must still be written.
        """
        for p in partitions:
            self._drop(p)

    def _drop(self, partition: int) -> None:
        state = self._parts.pop(partition, None)
        if state is not None:
            for seg in state.segments:
                seg.close()
        if self.id_dir is not None:  # and any left behind
            for stale in self.id_dir.glob(f"dedup-p{partition}-s*.*"):
                stale.unlink(missing_ok=True)

    def close(self) -> None:
        """Forget every partition (closing and deleting the id files)."""
        self.forget_partitions(list(self._parts))

    def __len__(self) -> int:
        return sum(seg.count for state in self._parts.values() for seg in state.segments)

    def index_bytes(self) -> int:
        """Bytes of the in-memory index: runs, block tables and an estimate of the open dicts."""
        return sum(seg.index_bytes() for s in self._parts.values() for seg in s.segments)


def _newest(entry: tuple[int, int, _Segment]) -> tuple[int, int]:
    return entry[0], entry[1]


def _finish(seg: _Segment, chunks: list[tuple[U64Array, U32Array]]) -> None:
    """Sort the restored entries of a segment into one run."""
    if chunks:
        fps, ords = (np.concatenate(parts) for parts in zip(*chunks, strict=True))
        chunks.clear()
        seg.runs.append(_Run(fps, ords, _NEVER))
