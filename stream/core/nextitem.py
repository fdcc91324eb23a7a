"""Next-item prediction quality, test-then-learn in event-time order: HR@k and MRR@k.

Each item event whose user already has an event in the current session is a
test case: before learning from it, each method ranks ``k`` items for the user
and scores a hit when the event's item is among them (MRR adds 1/rank). Then
every method learns from it. Methods:

- ``POP``: the most popular items (time-decayed popularity);
- ``S-POP``: the items of the user's current session by count (the offer rule
  of earlier releases: what the user engaged with most), filled with ``POP``;
- ``Pulse``: :class:`~stream.core.recommend.Recommender`; with ``partitions > 1``
  one per partition of users (as workers run it), else one over every user.

>>> events = [("s1", "a", "view", 0), ("s1", "b", "view", 1), ("s2", "a", "view", 5),
...           ("s2", "b", "view", 6)]
>>> scores = next_item_quality(events, k=2)
>>> scores["Pulse"], scores["cases"]
((0.5, 0.5), 2)
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Any

from stream.core.recommend import KINDS, Recommender

ItemEvent = tuple[str, str, str, int]  # user, item, kind, ts (ms)


def partition_of(user: str, partitions: int) -> int:
    """A stable partition per user (a stand-in for the Kafka key's partition)."""
    return zlib.crc32(user.encode()) % partitions


def next_item_quality(
    events: Iterable[ItemEvent], k: int = 20, partitions: int = 1, **options: Any
) -> dict[str, Any]:
    """HR@k and MRR@k per method over ``events`` (in time order), and the test cases."""
    recs = [Recommender(**options) for _ in range(partitions)]
    pop = Recommender(**options)
    gap = recs[0].session_gap_ms
    sessions: dict[str, list[tuple[str, int, int]]] = {}
    hits: dict[str, list[float]] = {"POP": [0, 0], "S-POP": [0, 0], "Pulse": [0, 0]}
    cases = 0
    for user, item, kind, ts in events:
        rec = recs[partition_of(user, partitions)] if partitions > 1 else recs[0]
        session = sessions.get(user)
        if session and ts - session[-1][1] > gap:
            session = sessions[user] = []
        if session:
            cases += 1
            popular = [i for i, _ in pop.popular()[:k]]
            spop = session_popularity(session, k)
            spop += [i for i in popular if i not in spop][: k - len(spop)]
            pulse = [i for i, _ in rec.recommend(user, k)[0]]
            for name, ranked in (("POP", popular), ("S-POP", spop), ("Pulse", pulse)):
                rank = hit_rank(ranked, item)
                if rank is not None:
                    hits[name][0] += 1
                    hits[name][1] += 1.0 / rank
        sessions.setdefault(user, []).append((item, ts, KINDS.index(kind)))
        rec.observe(user, item, kind, ts)
        pop.observe(user, item, kind, ts)
    out: dict[str, Any] = {
        name: (h / cases, mrr / cases) if cases else (0.0, 0.0) for name, (h, mrr) in hits.items()
    }
    out["cases"] = cases
    out["recommenders"] = recs
    return out


def hit_rank(ranked: Iterable[str], target: str) -> int | None:
    """1-based rank of ``target`` in ``ranked`` (None when absent).

    >>> hit_rank(["a", "b"], "b"), hit_rank(["a"], "z")
    (2, None)
    """
    for n, item in enumerate(ranked, 1):
        if item == target:
            return n
    return None


def session_popularity(events: Iterable[tuple[str, int, int]], k: int) -> list[str]:
    """S-POP: the items of the user's current events by count, most recent first on ties.

    >>> session_popularity([("a", 0, 0), ("b", 1, 0), ("a", 2, 0), ("c", 3, 0)], 2)
    ['a', 'c']
    """
    counts: dict[str, list[float]] = {}
    for n, (item, _, _) in enumerate(events):
        c = counts.setdefault(item, [0, 0])
        c[0] += 1
        c[1] = n
    return [i for i, _ in sorted(counts.items(), key=lambda kv: (-kv[1][0], -kv[1][1]))[:k]]
