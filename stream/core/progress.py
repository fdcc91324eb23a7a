"""Whether a source partition is caught up, so the wall clock may close its windows.

An idle partition's windows close on the wall clock (``now − grace``) so that a
quiet partition does not hold back the merged results. That is only right when
the partition is idle because nothing is left to read, not because its backlog
is still on the broker, in the fetcher's buffer or in the agent's queue (after
a restart, a rebalance or a slow moment): closing then would turn the backlog
into late events.

>>> caught_up(highwater=120, polled_ms=10_000, processed=119, committed=100, position=120,
...           now_ms=10_400)
True
>>> caught_up(highwater=120, polled_ms=10_000, processed=80, committed=50, position=120,
...           now_ms=10_400)  # records fetched, not yet processed
False
>>> caught_up(highwater=120, polled_ms=1_000, processed=119, committed=100, position=120,
...           now_ms=10_400)  # no fetch answer for 9.4 s: the highwater may be stale
False
"""

from __future__ import annotations

from typing import TypedDict

#: A highwater older than this (ms) is not trusted: the partition is paused,
#: rebalancing, or its fetched records are still buffered (not re-fetched).
FRESH_MS = 5_000


class Progress(TypedDict):
    """What the consumer knows of a partition (None: not known yet)."""

    highwater: int | None  # the broker's next offset, from its last fetch answer
    polled_ms: int | None  # when that answer came (epoch ms)
    position: int | None  # the fetcher's next offset
    committed: int | None  # the group's committed offset


def next_unprocessed(processed: int | None, committed: int | None, position: int | None) -> int:
    """Offset of the next record this worker has not processed yet.

    ``processed`` is the last offset the agent finished since the partition was
    assigned, ``committed`` the group's committed offset (only ever past
    processed records), ``position`` the fetcher's next offset, used only when
    neither is known (a new group on a partition without records).

    >>> next_unprocessed(41, 30, 60), next_unprocessed(None, 30, 60)
    (42, 30)
    >>> next_unprocessed(None, None, 7)
    7
    """
    if processed is not None:
        return max(processed + 1, committed or 0)
    if committed is not None:
        return committed
    return position or 0


def caught_up(
    *,
    highwater: int | None,
    polled_ms: int | None,
    processed: int | None,
    committed: int | None,
    position: int | None,
    now_ms: int,
    fresh_ms: int = FRESH_MS,
) -> bool:
    """True when every record up to the broker's recent highwater has been processed."""
    if highwater is None or polled_ms is None or now_ms - polled_ms > fresh_ms:
        return False
    return next_unprocessed(processed, committed, position) >= highwater
