"""Giving the C allocator's free pages back to the system.

After a restore or the expiry of a dedup segment, numpy and RocksDB have freed
memory that glibc keeps in its arenas; :func:`release_free_memory` trims them so
that RSS shows what is in use (the restore of 20M ids otherwise leaves the
pages of the log records it read).
"""

from __future__ import annotations

import contextlib
import ctypes


def release_free_memory() -> None:
    """``malloc_trim(0)``; a no-op where glibc is not the allocator."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
