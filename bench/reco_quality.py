"""Next-item recommendation quality, test-then-learn (``make quality`` prints its RECO line).

Data sets, each in event-time order (:func:`stream.core.nextitem.next_item_quality`):

* ``diginetica``: the real sample in ``../shared/data/diginetica-sample-item-views.csv.gz``
  (CIKM Cup 2016; 12,390 item views of anonymous sessions; each session is a user, its
  events ordered by day, session id and time offset);
* ``sim``: :class:`stream.core.browsing.BrowseSim` with its defaults: 500 shoppers over
  3 days, 2,000 items in 100 categories of 20 (Zipf popularity of categories and of items
  inside them), two preferred categories per shopper, about 4 sessions of about 8 events
  each; a next item is the sequential successor with p 0.45, a re-visit within the session
  with p 0.15, any item by popularity with p 0.10, else from a preferred category; 70 %
  views, 20 % clicks, 7 % add-to-carts, 3 % purchases; seed 42.

Methods: POP, S-POP (the session's items by count, filled with POP; the offer rule of
earlier releases) and Pulse's recommender, one over every user (``partitions=1``, what a
repartition by item would give) and one per partition of users (4, as workers run it).
Goals: on Diginetica HR@20 ≥ 1.25 × S-POP and MRR@20 above S-POP; on the simulator
HR@20 ≥ 1.6 × S-POP. State is measured in memory (Python objects) per item and per user.
"""

from __future__ import annotations

import datetime as dt
import gzip
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from stream.core.browsing import BrowseSim
from stream.core.nextitem import ItemEvent, next_item_quality
from stream.core.recommend import Recommender

DIGINETICA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "diginetica-sample-item-views.csv.gz"
)


def diginetica(path: Path = DIGINETICA) -> list[ItemEvent]:
    """The sample's views as ``(session, item, "view", ms)``, in time order."""
    rows = []
    with gzip.open(path, "rt") as f:
        next(f)  # header: session_id;user_id;item_id;timeframe;eventdate
        for line in f:
            session, _user, item, offset, day = line.rstrip("\n").split(";")
            midnight = dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).timestamp()
            rows.append((int(midnight * 1000), int(session), int(offset), session, item))
    rows.sort()
    return [(s, item, "view", day + offset) for day, _, offset, s, item in rows]


def simulated(sim: BrowseSim | None = None) -> list[ItemEvent]:
    """:class:`BrowseSim` events as item events (a purchase's first item)."""
    out = []
    for e in (sim or BrowseSim()).events():
        item = e.get("item_id") or e["items"][0]["item_id"]
        out.append((e["user_id"], item, e["type"], e["event_time"]))
    return out


def deep_size(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of ``obj`` and everything it holds (each object counted once)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, list | tuple | set):
        size += sum(deep_size(v, seen) for v in obj)
    return size


def state_sizes(rec: Recommender) -> tuple[float, float]:
    """Bytes per item (popularity, neighbours, campaigns) and per user (sessions)."""
    seen: set[int] = set()
    items = sum(deep_size(part, seen) for part in (rec.pop, rec.co, rec.campaigns))
    users = deep_size(rec.users, seen)
    return items / max(len(rec.pop), 1), users / max(len(rec.users), 1)


def reco_quality(out: Callable[[str], None] = print) -> list[str]:
    """Run both data sets; print the details and return the RECO summary's parts."""
    parts = []
    for name, events, goal in (("diginetica", diginetica(), 1.25), ("sim", simulated(), 1.6)):
        one = next_item_quality(events)
        four = next_item_quality(events, partitions=4)
        pop, spop, pulse, split = one["POP"], one["S-POP"], one["Pulse"], four["Pulse"]
        ratio = pulse[0] / spop[0] if spop[0] else 0.0
        per_item, per_user = state_sizes(one["recommenders"][0])
        out(
            f"{name}: {one['cases']:,} next-item cases; HR@20 / MRR@20 POP {_pair(pop)}, "
            f"S-POP {_pair(spop)}, Pulse {_pair(pulse)} (one model), {_pair(split)} (a model "
            f"per partition of 4: {split[0] / pulse[0] - 1:+.1%} HR); state {per_item:,.0f} B "
            f"per item, {per_user:,.0f} B per user"
        )
        ok = ratio >= goal and (name != "diginetica" or pulse[1] > spop[1])
        parts.append(
            f"{name} POP {_pair(pop)} S-POP {_pair(spop)} Pulse {_pair(pulse)} "
            f"(HR x{ratio:.2f} S-POP, goal ≥{goal:g}"
            + (", MRR above" if name == "diginetica" else "")
            + f") {'PASS' if ok else 'MISS'}; per-partition(4) {_pair(split)}"
        )
    return parts


def _pair(scores: Iterable[float]) -> str:
    return "/".join(f"{s:.3f}" for s in scores)


if __name__ == "__main__":
    print("RECO " + " | ".join(reco_quality()))
