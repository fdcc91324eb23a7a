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
from collections.abc import Iterable, MutableMapping
from typing import Any, Protocol

Seen = list[int]  # [first_seen_ms, partition, offset]


class PartitionedStore(Protocol):
    """Key-value state whose writes name their partition (see ``stream.state.TableStore``)."""

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
    """

    def __init__(self, store: MutableMapping[str, Any] | PartitionedStore, ttl_ms: int) -> None:
        self.store: PartitionedStore = (
            DictStore(store) if isinstance(store, MutableMapping) else store
        )
        self.ttl_ms = ttl_ms
        self._order: dict[int, deque[tuple[int, str]]] = {}
        self.writes: list[tuple[int, str, Seen | None]] = []

    def is_duplicate(self, event_id: str, partition: int, offset: int, now_ms: int) -> bool:
        prev = self.store.get(event_id)
        if prev is not None and now_ms - prev[0] < self.ttl_ms:
            return not (prev[1] == partition and prev[2] == offset)
        value = [now_ms, partition, offset]
        self.store.put(partition, event_id, value)
        self.writes.append((partition, event_id, value))
        order = self._order.get(partition)
        if order is None:
            order = self._order[partition] = deque()
        order.append((now_ms, event_id))
        return False

    def expire(self, now_ms: int) -> list[tuple[int, str]]:
        """Forget ids first seen more than ``ttl_ms`` ago; return ``(partition, id)`` removed."""
        removed: list[tuple[int, str]] = []
        cutoff = now_ms - self.ttl_ms
        store = self.store
        for partition, order in self._order.items():
            while order and order[0][0] <= cutoff:
                seen_ms, event_id = order.popleft()
                current = store.get(event_id)
                if current is not None and current[0] == seen_ms and current[1] == partition:
                    store.remove(partition, event_id)
                    removed.append((partition, event_id))
                    self.writes.append((partition, event_id, None))
        return removed

    def rebuild(self, items: Iterable[tuple[str, Seen]]) -> int:
        """Re-index state restored from a changelog so that it expires again."""
        entries = sorted((v[0], v[1], k) for k, v in items)
        self._order = {}
        for seen_ms, partition, event_id in entries:
            self._order.setdefault(partition, deque()).append((seen_ms, event_id))
        return len(entries)

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        """Drop the expiry index of partitions this worker no longer owns."""
        for p in partitions:
            self._order.pop(p, None)

    def drain_writes(self) -> list[tuple[int, str, Seen | None]]:
        writes, self.writes = self.writes, []
        return writes

    def __len__(self) -> int:
        return sum(len(o) for o in self._order.values())
