"""Keeping the C allocator's free pages from counting as the worker's memory.

glibc keeps what the program frees in its heaps: after a restore or the expiry
of a dedup segment, numpy and RocksDB have freed memory that still shows in
RSS, so :func:`release_free_memory` trims it. And by default glibc raises its
mmap threshold to the size of each large block freed, so that the next
temporaries of that size (a model checkpoint being encoded, several
MiB every ``PULSE_CHECKPOINT_INTERVAL``) come from the heap and stay there until
a trim: RSS then steps up and down by ~10 MiB, hiding whether state grows.
:func:`bound_allocator_retention` fixes the thresholds, so blocks of 128 KiB
and more are mapped and unmapped on their own and a heap top of more than
256 KiB free is given back at once (what ``MALLOC_MMAP_THRESHOLD_=131072
MALLOC_TRIM_THRESHOLD_=262144`` would do from the environment).

>>> bound_allocator_retention() in (True, False)
True
"""

from __future__ import annotations

import contextlib
import ctypes

__all__ = ["bound_allocator_retention", "release_free_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024
TRIM_THRESHOLD = 256 * 1024


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def release_free_memory() -> None:
    """``malloc_trim(0)``; a no-op where glibc is not the allocator."""
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(AttributeError):
            libc.malloc_trim(0)


def bound_allocator_retention() -> bool:
    """Fix glibc's mmap and trim thresholds (see above); False where glibc is not there."""
    libc = _libc()
    if libc is None:
        return False
    try:
        ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    except AttributeError:
        return False
    return bool(ok)
