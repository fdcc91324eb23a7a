"""Next-item recommendations learned from the stream: sessions, item neighbours, popularity.

Pure logic, one :class:`Recommender` per source partition (the worker's and the
backtest's). Users are partitioned by id, so each partition learns its item
statistics from its own users (README, "Recommendations", measures what that
costs against one set of statistics over every user).

What it keeps, all bounded:

- per user, their last :attr:`~Recommender.history` item events ``(item, ts, kind)``,
  split into sessions where the gap between two events exceeds ``session_gap_ms``
  (default 30 min); users idle for ``user_ttl_ms`` are forgotten;
- per item, a popularity (views 1, clicks 2, add-to-carts 3, purchased items 4) and
  at most ``neighbours`` (M) neighbours: within a session each event's item is a
  neighbour of the items before it (sequential rules, weight ``1/distance``) and,
  at half that weight, they of it (co-visitation). Both decay in event time with
  ``half_life_ms`` (default 30 days). At most ``max_items`` items are kept: past
  that, the least popular quarter is dropped.

Scoring a user (:meth:`Recommender.recommend`): each item of the current session,
most recent first with weight ``1/(1 + rank)``, adds its neighbour row
(scaled to its strongest neighbour) and a reminder score for itself; items of
earlier sessions add the same at :data:`EARLIER` of that weight; the strongest
neighbours add their own rows at :data:`SECOND` of their score (two hops, for
sparse catalogs); a tiny popularity prior breaks ties and fills the list. A user
with no items gets popularity alone (``policy: "popular"``), otherwise the policy
is ``"session-knn"``.

>>> r = Recommender()
>>> for n, item in enumerate(["a", "b", "c"] * 3):
...     r.observe(f"u{n // 3}", item, "view", n * 1_000)
>>> r.observe("new", "a", "view", 10_000)
>>> [i for i, _ in r.recommend("new", 2)[0]], r.recommend("new", 2)[1]
(['b', 'a'], 'session-knn')
>>> r.recommend("stranger", 2)[1]
'popular'
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

#: weight of an event kind in popularity and neighbourhoods
KIND_WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 4.0}
KINDS = tuple(KIND_WEIGHTS)
BACKWARD = 0.5  # co-visitation weight of an earlier item, relative to the following one
LOOKBACK = 5  # items before an event that it becomes a neighbour of
EARLIER = 0.3  # weight of earlier sessions' items relative to the current session's
REMIND = 0.6  # reminder score of an item already seen, relative to a full neighbour row
PRIOR = 0.001  # popularity prior: only breaks ties and fills the list
SECOND = 0.2  # weight of the neighbours' neighbours (two hops), relative to one hop
SECOND_FROM = 20  # strongest neighbours whose own neighbours are added
TOP_POPULAR = 100  # popular items kept ready (the fallback and the prior)
SESSION_ITEMS = 20  # items of the current session that score
MAX_CAMPAIGNS = 8  # campaigns remembered per item (for ``campaign_id`` filters)
DAY_MS = 86_400_000
_RESCALE_AT = 500.0  # half-lives past the base time before the stored values are rescaled
STATE_FORMAT = 1


class Recommender:
    """Per-partition item statistics and user sessions (see the module docstring)."""

    def __init__(
        self,
        session_gap_ms: int = 1_800_000,
        neighbours: int = 50,
        history: int = 30,
        half_life_ms: int = 30 * DAY_MS,
        max_items: int = 200_000,
        user_ttl_ms: int = 30 * DAY_MS,
    ) -> None:
        self.session_gap_ms = session_gap_ms
        self.neighbours = neighbours
        self.history = history
        self.half_life_ms = half_life_ms
        self.max_items = max_items
        self.user_ttl_ms = user_ttl_ms
        # stored values are true values x 2^((ts - base) / half-life): decay is one scale
        self.base = 0
        self.pop: dict[str, float] = {}
        self.co: dict[str, dict[str, float]] = {}
        self.campaigns: dict[str, list[str]] = {}  # item -> campaigns it was shown in
        self.users: dict[str, list[tuple[str, int, int]]] = {}  # user -> [(item, ts, kind)]
        self.max_ts = 0
        self.next_sweep = 0
        self._top: list[tuple[str, float]] | None = None
        self._changes = 0

    # -- learning ---------------------------------------------------------------------

    def observe_event(self, user: str, event: Mapping[str, Any]) -> None:
        """Learn from a valid event: its ``item_id``, or a purchase's ``items``."""
        kind, ts = event["type"], event["ts"]
        if kind not in KIND_WEIGHTS:
            return
        item = event.get("item_id")
        if item is not None:
            self.observe(user, item, kind, ts, event.get("campaign_id"))
        if kind == "purchase":
            for line in event.get("items") or ():
                self.observe(user, line["item_id"], kind, ts)

    def observe(
        self, user: str, item: str, kind: str, ts: int, campaign: str | None = None
    ) -> None:
        """One item event of ``user`` at ``ts`` (ms): popularity, neighbours, their history."""
        if ts > self.max_ts:
            self.max_ts = ts
            if (ts - self.base) / self.half_life_ms > _RESCALE_AT:
                self._rescale(ts)
        weight = KIND_WEIGHTS[kind]
        scale = self._scale(ts)
        events = self.users.get(user)
        if events is None:
            events = self.users[user] = []
        self._add(events, item, ts, weight * scale)
        if campaign is not None:
            shown = self.campaigns.setdefault(item, [])
            if campaign not in shown:
                shown.append(campaign)
                del shown[:-MAX_CAMPAIGNS]
        events.append((item, ts, KINDS.index(kind)))
        if len(events) > self.history:
            del events[: len(events) - self.history]
        self._changes += 1
        if len(self.pop) > self.max_items:
            self._drop_items()
        if self.max_ts >= self.next_sweep:
            self.sweep()

    def _scale(self, ts: int) -> float:
        return float(2.0 ** ((ts - self.base) / self.half_life_ms))

    def _add(self, before: list[tuple[str, int, int]], item: str, ts: int, value: float) -> None:
        """Add (or, with a negative value, take back) one event's contributions."""
        self.pop[item] = self.pop.get(item, 0.0) + value
        gap = self.session_gap_ms
        distance = 0
        last_ts = ts
        seen: set[str] = {item}
        for prev, prev_ts, _ in reversed(before):
            if last_ts - prev_ts > gap or distance >= LOOKBACK:
                break
            last_ts = prev_ts
            if prev in seen:
                continue
            seen.add(prev)
            distance += 1
            w = value / distance
            self._bump(prev, item, w)
            self._bump(item, prev, w * BACKWARD)

    def _bump(self, a: str, b: str, value: float) -> None:
        row = self.co.get(a)
        if row is None:
            row = self.co[a] = {}
        v = row.get(b, 0.0) + value
        if v <= 1e-12 * abs(value):
            row.pop(b, None)
        else:
            row[b] = v
        if len(row) > 2 * self.neighbours:
            keep = heapq.nlargest(self.neighbours, row.items(), key=lambda kv: kv[1])
            self.co[a] = dict(keep)

    def _rescale(self, ts: int) -> None:
        factor = 2.0 ** (-(ts - self.base) / self.half_life_ms)
        self.base = ts
        # what decayed to nothing (below the smallest float) is forgotten
        self.pop = {i: x for i, v in self.pop.items() if (x := v * factor) > 0.0}
        co = {}
        for a, row in self.co.items():
            kept = {b: x for b, v in row.items() if (x := v * factor) > 0.0}
            if kept and a in self.pop:
                co[a] = kept
        self.co = co
        self.campaigns = {a: c for a, c in self.campaigns.items() if a in self.pop}
        self._top = None

    def _drop_items(self) -> None:
        keep = heapq.nlargest(self.max_items * 3 // 4, self.pop.items(), key=lambda kv: kv[1])
        self.pop = dict(keep)
        self.co = {a: row for a, row in self.co.items() if a in self.pop}
        self.campaigns = {a: c for a, c in self.campaigns.items() if a in self.pop}
        self._top = None

    def sweep(self) -> None:
        """Forget users idle for ``user_ttl_ms`` (runs every 1/8 of it in event time)."""
        horizon = self.max_ts - self.user_ttl_ms
        self.users = {u: ev for u, ev in self.users.items() if ev and ev[-1][1] >= horizon}
        self.next_sweep = self.max_ts + self.user_ttl_ms // 8

    def erase_user(self, user: str) -> bool:
        """Forget ``user``'s sessions and take back their retained events' contributions
        to popularity and neighbours (what stays is aggregate); True if any were held."""
        events = self.users.pop(user, None)
        if not events:
            return False
        for n, (item, ts, kind) in enumerate(events):
            value = KIND_WEIGHTS[KINDS[kind]] * self._scale(ts)
            self._add(events[:n], item, ts, -value)
            if self.pop.get(item, 0.0) <= 1e-9 * value:
                self.pop.pop(item, None)
        self._top = None
        return True

    def take_user(self, user: str) -> list[list[Any]] | None:
        """Remove and return ``user``'s history (it moves to the identity they were merged
        into; what they taught the item statistics stays); None when none is held."""
        events = self.users.pop(user, None)
        return [list(e) for e in events] if events else None

    def merge_user(self, user: str, events: Iterable[Iterable[Any]]) -> None:
        """Add a merged id's history (:meth:`take_user`) to ``user``'s, in time order.

        Idempotent: events already held are not added again.
        """
        mine = set(self.users.get(user, ()))
        for item, ts, kind in events:
            if not 0 <= int(kind) < len(KINDS):
                raise ValueError(f"unknown event kind {kind!r} in a handover")
            mine.add((str(item), int(ts), int(kind)))
        if mine:
            self.users[user] = sorted(mine, key=lambda e: (e[1], e[2], e[0]))[-self.history :]

    # -- scoring ----------------------------------------------------------------------

    def popular(self) -> list[tuple[str, float]]:
        """The most popular items with their popularity relative to the first (cached:
        recomputed after a number of new events that grows with the catalog, so the cost
        per event stays bounded)."""
        if self._top is None or self._changes > max(50, len(self.pop) // 100):
            top = heapq.nlargest(TOP_POPULAR, self.pop.items(), key=lambda kv: kv[1])
            first = top[0][1] if top else 1.0
            self._top = [(i, v / first) for i, v in top]
            self._changes = 0
        return self._top

    def recommend(
        self,
        user: str,
        k: int = 20,
        exclude_seen: bool = False,
        campaign: str | None = None,
    ) -> tuple[list[tuple[str, float]], str]:
        """The top ``k`` items for ``user`` with scores, and the policy that chose them."""
        events = self.users.get(user) or []
        scores: dict[str, float] = {}
        for item, prior in self.popular():
            scores[item] = PRIOR * prior
        policy = "popular"
        if events:
            policy = "session-knn"
            self._score_sessions(events, scores)
        if exclude_seen:
            for item, _, _ in events:
                scores.pop(item, None)
        if campaign is not None:
            scores = {i: s for i, s in scores.items() if campaign in self.campaigns.get(i, ())}
        top = heapq.nlargest(k, scores.items(), key=lambda kv: (kv[1], kv[0]))
        return [(i, round(s, 6)) for i, s in top], policy

    def _score_sessions(self, events: list[tuple[str, int, int]], scores: dict[str, float]) -> None:
        gap = self.session_gap_ms
        weight = 1.0
        rank = 0
        seen: set[str] = set()
        last_ts = events[-1][1]
        near: dict[str, float] = {}
        for item, ts, _ in reversed(events):
            if weight == 1.0 and last_ts - ts > gap:
                weight = EARLIER  # earlier sessions
                rank = 0
            last_ts = ts
            if item in seen:
                continue
            seen.add(item)
            if weight == 1.0 and rank >= SESSION_ITEMS:
                continue
            w = weight / (1 + rank)
            rank += 1
            scores[item] = scores.get(item, 0.0) + REMIND * w
            self._add_row(item, w, near)
        second: dict[str, float] = {}
        for item, w in heapq.nlargest(SECOND_FROM, near.items(), key=lambda kv: kv[1]):
            self._add_row(item, SECOND * w, second)
        for part in (near, second):
            for item, s in part.items():
                scores[item] = scores.get(item, 0.0) + s

    def _add_row(self, item: str, weight: float, into: dict[str, float]) -> None:
        """Add ``item``'s neighbours, scaled to its strongest one, times ``weight``."""
        row = self.co.get(item) or {}
        top = max(row.values(), default=0.0)
        if top > 0.0:
            for other, v in row.items():
                into[other] = into.get(other, 0.0) + weight * v / top

    # -- state ------------------------------------------------------------------------

    def state_bytes(self) -> tuple[int, int]:
        """Approximate bytes held (item statistics, user sessions) in the checkpoint's form."""
        items = sum(len(i) + 8 for i in self.pop)
        items += sum(12 * len(row) for row in self.co.values())
        users = sum(len(u) + 16 * len(ev) for u, ev in self.users.items())
        return items, users

    def to_state(self) -> dict[str, Any]:
        """Plain data for a checkpoint (``stream.core.plainstate``): names once, numbers in
        arrays."""
        names = list(self.pop)
        code = {n: i for i, n in enumerate(names)}
        rows = [(code[a], row) for a, row in self.co.items() if a in code]
        nbr = [(code[b], v) for _, row in rows for b, v in row.items() if b in code]
        lengths = [sum(1 for b in row if b in code) for _, row in rows]
        users = list(self.users)
        user_events = [e for u in users for e in self.users[u] if e[0] in code]
        return {
            "format": STATE_FORMAT,
            "base": self.base,
            "max_ts": self.max_ts,
            "next_sweep": self.next_sweep,
            "items": names,
            "pop": np.array([self.pop[n] for n in names], np.float64),
            "row_item": np.array([a for a, _ in rows], np.int64),
            "row_len": np.array(lengths, np.int64),
            "nbr": np.array([b for b, _ in nbr], np.int64),
            "nbr_value": np.array([v for _, v in nbr], np.float64),
            "campaigns": {n: self.campaigns[n] for n in names if n in self.campaigns},
            "users": users,
            "user_len": np.array(
                [sum(1 for e in self.users[u] if e[0] in code) for u in users], np.int64
            ),
            "event_item": np.array([code[e[0]] for e in user_events], np.int64),
            "event_ts": np.array([e[1] for e in user_events], np.int64),
            "event_kind": np.array([e[2] for e in user_events], np.int64),
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Set this recommender to a :meth:`to_state` checkpoint (a wrong shape raises)."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"recommender state format {state.get('format')!r} is not 1")
        names = [str(n) for n in state["items"]]
        self.base, self.max_ts = int(state["base"]), int(state["max_ts"])
        self.next_sweep = int(state["next_sweep"])
        self.pop = dict(zip(names, map(float, state["pop"]), strict=True))
        self.co = {}
        nbr, values = state["nbr"], state["nbr_value"]
        at = 0
        for a, n in zip(state["row_item"], state["row_len"], strict=True):
            n = int(n)
            self.co[names[a]] = {
                names[b]: float(v)
                for b, v in zip(nbr[at : at + n], values[at : at + n], strict=True)
            }
            at += n
        self.campaigns = {str(i): [str(c) for c in cs] for i, cs in state["campaigns"].items()}
        self.users = {}
        at = 0
        items, ts, kinds = state["event_item"], state["event_ts"], state["event_kind"]
        for user, n in zip(state["users"], state["user_len"], strict=True):
            n = int(n)
            self.users[str(user)] = [
                (names[i], int(t), int(c))
                for i, t, c in zip(
                    items[at : at + n], ts[at : at + n], kinds[at : at + n], strict=True
                )
            ]
            at += n
        if not all(0 <= c < len(KINDS) for c in kinds):
            raise ValueError("recommender state has an unknown event kind")
        self._top = None
