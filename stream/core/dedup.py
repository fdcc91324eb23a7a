"""Exactly-once-per-``event_id`` bookkeeping with time-bounded memory.

State is a mapping ``event_id -> [first_seen_ms, partition, offset]`` (in a worker
it is a changelog-backed Faust table). A repeat inside ``ttl_ms`` is a duplicate,
except the *same record* (same partition and offset) delivered again after a
crash, which must be processed again rather than lost.

>>> d = Deduplicator({}, ttl_ms=1000)
>>> d.is_duplicate("e1", partition=0, offset=5, now_ms=0)
False
>>> d.is_duplicate("e1", partition=0, offset=9, now_ms=10)
True
>>> d.is_duplicate("e1", partition=0, offset=5, now_ms=20)   # redelivery of offset 5
False
>>> d.expire(now_ms=2000)
[(0, 'e1')]
>>> d.is_duplicate("e1", partition=0, offset=11, now_ms=2001)
False
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any, Protocol

Seen = list[int]  # [first_seen_ms, partition, offset]


class PartitionedStore(Protocol):
    """Key-value state whose writes name their partition (``faust_internals.TableStore``)."""

    def get(self, key: str) -> Any: ...
    def put(self, partition: int, key: str, value: Any) -> None: ...
    def remove(self, partition: int, key: str) -> None: ...


class DictStore:
    """A plain dict as a :class:`PartitionedStore` (tests, backtests)."""

    def __init__(self, data: MutableMapping[str, Any] | None = None) -> None:
        self.data = {} if data is None else data

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def put(self, partition: int, key: str, value: Any) -> None:
        self.data[key] = value

    def remove(self, partition: int, key: str) -> None:
        self.data.pop(key, None)


class Deduplicator:
    """Decide duplicates and record the writes a changelog needs.

    ``writes`` collects ``(partition, event_id, value_or_None)`` since the last
    :meth:`drain_writes`; ``None`` is a deletion (a changelog tombstone).

    The expiry index keeps ids per partition in time buckets of ``bucket_ms``
    (default TTL/10,000: 8.6 s for 24 h), packed into one ``bytearray`` per
    bucket: 2 + len(id) bytes per id instead of a tuple, an int and a deque slot
    (about 100 B). With the RocksDB store, where the ids themselves live on
    disk, that index is what stays in memory. An id is forgotten within one
    bucket after its TTL; whether a repeat is a duplicate is decided on the
    stored first sighting, to the millisecond.
    """

    def __init__(
        self,
        store: MutableMapping[str, Any] | PartitionedStore,
        ttl_ms: int,
        bucket_ms: int | None = None,
    ) -> None:
        self.store: PartitionedStore = (
            DictStore(store) if isinstance(store, MutableMapping) else store
        )
        self.ttl_ms = ttl_ms
        self.bucket_ms = bucket_ms or max(1, ttl_ms // 10_000)
        # partition -> buckets oldest first: [start_ms, packed ids]; the newest as _current
        self._buckets: dict[int, deque[list[Any]]] = {}
        self._current: dict[int, list[Any]] = {}
        self.writes: list[tuple[int, str, Seen | None]] = []

    def is_duplicate(self, event_id: str, partition: int, offset: int, now_ms: int) -> bool:
        prev = self.store.get(event_id)
        if prev is not None and now_ms - prev[0] < self.ttl_ms:
            return not (prev[1] == partition and prev[2] == offset)
        value = [now_ms, partition, offset]
        self.store.put(partition, event_id, value)
        self.writes.append((partition, event_id, value))
        bucket = self._current.get(partition)
        if bucket is None or now_ms - bucket[0] >= self.bucket_ms:
            bucket = self._bucket(partition, now_ms)
        raw = event_id.encode()
        packed: bytearray = bucket[1]
        n = len(raw)
        packed += _LENGTHS[n] if n < 256 else n.to_bytes(2, "little")
        packed += raw
        return False

    def _bucket(self, partition: int, seen_ms: int) -> list[Any]:
        """The bucket to index an id first seen at ``seen_ms`` in (a new one when due)."""
        buckets = self._buckets.get(partition)
        if buckets is None:
            buckets = self._buckets[partition] = deque()
        start = seen_ms - seen_ms % self.bucket_ms
        if buckets and buckets[-1][0] >= start:  # current bucket (or the clock stepped back)
            return buckets[-1]
        bucket = self._current[partition] = [start, bytearray()]
        buckets.append(bucket)
        return bucket

    def expire(self, now_ms: int) -> list[tuple[int, str]]:
        """Forget ids first seen more than ``ttl_ms`` ago; return ``(partition, id)`` removed."""
        removed: list[tuple[int, str]] = []
        cutoff = now_ms - self.ttl_ms
        size = self.bucket_ms
        store = self.store
        for partition, buckets in self._buckets.items():
            while buckets and buckets[0][0] + size - 1 <= cutoff:
                bucket = buckets.popleft()
                if self._current.get(partition) is bucket:
                    del self._current[partition]
                start, packed = bucket
                end = start + size
                for event_id in _unpack(packed):
                    current = store.get(event_id)
                    # Not when seen again later (after its TTL) and indexed in a newer bucket.
                    if current is not None and current[0] < end and current[1] == partition:
                        store.remove(partition, event_id)
                        removed.append((partition, event_id))
                        self.writes.append((partition, event_id, None))
        return removed

    def rebuild(self, items: Iterable[tuple[str, Seen]]) -> int:
        """Re-index state restored from a changelog so that it expires again."""
        entries = sorted((v[0], v[1], k) for k, v in items)
        self._buckets, self._current = {}, {}
        for seen_ms, partition, event_id in entries:
            raw = event_id.encode()
            self._bucket(partition, seen_ms)[1] += len(raw).to_bytes(2, "little") + raw
        return len(entries)

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        """Drop the expiry index of partitions this worker no longer owns."""
        for p in partitions:
            self._buckets.pop(p, None)
            self._current.pop(p, None)

    def drain_writes(self) -> list[tuple[int, str, Seen | None]]:
        writes, self.writes = self.writes, []
        return writes

    def __len__(self) -> int:
        return sum(len(list(_unpack(b[1]))) for bs in self._buckets.values() for b in bs)


_LENGTHS = [n.to_bytes(2, "little") for n in range(256)]


def _unpack(packed: bytes | bytearray) -> Iterator[str]:
    """Ids packed as 2-byte little-endian length + UTF-8 (ids are at most 64 characters).

    >>> list(_unpack(b"\\x02\\x00e1\\x03\\x00e22"))
    ['e1', 'e22']
    """
    i, n = 0, len(packed)
    while i < n:
        length = packed[i] | packed[i + 1] << 8
        yield packed[i + 2 : i + 2 + length].decode()
        i += 2 + length
