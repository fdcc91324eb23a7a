"""One memory budget for every RocksDB database of a worker (``PULSE_STORE_MEMORY``).

RocksDB's memory is mostly block cache, memtables, and the index and filter
blocks of its files. A :class:`RocksBudget` holds one LRU block cache of the
budget's size; memtables are charged to it through a write buffer manager and
index and filter blocks are cached in it, so every database opened with its
:meth:`RocksBudget.options` (Faust's tables and the dedup index alike) shares
one limit instead of each keeping its own caches (Faust's default is a 2 GiB
block cache per table partition).

>>> budget = RocksBudget(64 * 1024 * 1024)
>>> opts = budget.options()
>>> budget.memory_bytes, budget.cache_bytes, budget.usage() <= budget.cache_bytes
(67108864, 50331648, True)
"""

from __future__ import annotations

import rocksdict

__all__ = ["RocksBudget"]

_MIB = 1024 * 1024


class RocksBudget:
    """A block cache shared by memtables, blocks, indexes and filters, inside ``memory_bytes``.

    The cache is 3/4 of the budget: the rest is for what RocksDB allocates
    outside it (table readers, iterators, compaction buffers) and for the C
    allocator's free pages, so that the process RSS RocksDB causes stays under
    the budget. A quarter of the cache may be memtables (flushed to disk beyond
    that); each database's write buffers are sized from it.
    """

    def __init__(self, memory_bytes: int) -> None:
        if memory_bytes < 16 * _MIB:
            raise ValueError(
                f"PULSE_STORE_MEMORY={memory_bytes} bytes is too small for RocksDB: "
                "give at least 16MiB (e.g. 256MiB)"
            )
        self.memory_bytes = memory_bytes
        self.cache_bytes = memory_bytes * 3 // 4
        self.cache = rocksdict.Cache(self.cache_bytes)
        self.memtable_bytes = self.cache_bytes // 4
        self.write_buffers = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
            self.memtable_bytes, False, self.cache
        )

    def options(self, *, raw_mode: bool = True) -> rocksdict.Options:
        """Options for a database (or column family) inside this budget."""
        opts = rocksdict.Options(raw_mode=raw_mode)
        opts.create_if_missing(True)
        opts.set_write_buffer_manager(self.write_buffers)
        opts.set_write_buffer_size(max(_MIB, min(64 * _MIB, self.memtable_bytes // 8)))
        opts.set_max_write_buffer_number(2)
        opts.set_max_open_files(512)
        opts.set_keep_log_file_num(2)
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(self.cache)
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        table.set_bloom_filter(10, False)
        opts.set_block_based_table_factory(table)
        return opts

    def usage(self) -> int:
        """Bytes held in the shared cache now (blocks, indexes, filters, charged memtables)."""
        return int(self.cache.get_usage())
