"""Partition-aware writes into a Faust table's local store, for batch agents.

Faust stores pick the partition of a write from the *current event*; batch
agents have no current event, so they name the partition themselves. Works for
the in-memory store and for the RocksDB store (``PULSE_STORE=rocksdb``, backed
by rocksdict), where large state such as 24 h of event ids lives on disk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


class TableStore:
    """``get`` / ``put(partition, …)`` / ``remove(partition, …)`` over ``table.data``."""

    def __init__(self, table: Any) -> None:
        self.data = table.data
        self.rocks = hasattr(self.data, "_db_for_partition")
        # In memory, read the plain dict: the store's Mapping.get raises and catches
        # a KeyError for every miss (most event ids), several times slower.
        self.get: Callable[[Any], Any] = self.data.get if self.rocks else self.data.data.get

    def put(self, partition: int, key: Any, value: Any) -> None:
        data = self.data
        if self.rocks:
            raw_key = data._encode_key(key)
            data._db_for_partition(partition).put(raw_key, data._encode_value(value))
            data._key_index[raw_key] = partition
        else:
            data.data[key] = value
            data._key_partition[key] = partition

    def remove(self, partition: int, key: Any) -> None:
        data = self.data
        if self.rocks:
            data._db_for_partition(partition).delete(data._encode_key(key))
        else:
            data.data.pop(key, None)
            data._key_partition.pop(key, None)

    def items(self) -> Iterator[tuple[Any, Any]]:
        return iter(self.data.items())
