"""Simulated shoppers browsing a catalog, with the truth of what each wants next.

The catalog's items sit in categories of ``category_size``; categories and the
items inside each have Zipf popularity. Each user prefers two categories. A
session starts in a preferred category and each next item is, with the
probabilities below:

- ``p_next``: the item after the current one in its category (a sequential
  pattern every user shares: phone, then its case);
- ``p_revisit``: an item already seen in the session (re-visits);
- ``p_switch``: any item by global popularity (a detour);
- otherwise an item of one of the user's categories, by popularity inside it.

Each step is a view, a click, an add-to-cart or a purchase of the item; some views
belong to a campaign of their category. :meth:`BrowseSim.truth` gives the
distribution of a user's next item after the events sent so far, so tests check
recommendations against what is true, not what was seen.

>>> sim = BrowseSim(users=20, seed=1)
>>> events = sim.events()
>>> {e["type"] for e in events} >= {"view", "click"}
True
>>> user = events[-1].get("user_id")
>>> len(sim.top(user, 5)), abs(sum(sim.truth(user).values()) - 1.0) < 1e-9
(5, True)
"""

from __future__ import annotations

import random
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

MINUTE_MS = 60_000
KIND_SHARES = (("view", 0.70), ("click", 0.20), ("add_to_cart", 0.07), ("purchase", 0.03))


Prefs = list[tuple[int, float]]  # preferred categories with their weights


class Catalog:
    """Items in categories of ``category_size`` with Zipf popularity, and how a shopper
    walks them (the module docstring's probabilities). Items past the last whole
    category are never shown.

    >>> cat = Catalog(100)
    >>> cat.successor(19), cat.item_id(cat.successor(7))
    (0, 'sku-00008')
    """

    def __init__(
        self,
        items: int,
        category_size: int = 20,
        p_next: float = 0.45,
        p_revisit: float = 0.15,
        p_switch: float = 0.10,
    ) -> None:
        if items < category_size or category_size < 1:
            raise ValueError(f"items ({items}) must fill at least one category of {category_size}")
        self.category_size = category_size
        self.categories = items // category_size
        self.p_next, self.p_revisit, self.p_switch = p_next, p_revisit, p_switch
        cat_w = [1.0 / (c + 1) for c in range(self.categories)]
        self.cat_pop = [w / sum(cat_w) for w in cat_w]
        in_w = [1.0 / (i + 1) for i in range(category_size)]
        self.in_pop = [w / sum(in_w) for w in in_w]  # popularity of a rank in its category
        self._cat_cum = list(accumulate(self.cat_pop))
        self._in_cum = list(accumulate(self.in_pop))

    def item(self, category: int, rank: int) -> int:
        """The item ranked ``rank`` in ``category``: its successor is the next id, not the
        next most popular item."""
        return category * self.category_size + (rank * 7) % self.category_size

    def successor(self, item: int) -> int:
        c, i = divmod(item, self.category_size)
        return c * self.category_size + (i + 1) % self.category_size

    @staticmethod
    def item_id(item: int) -> str:
        return f"sku-{item:05d}"

    def prefs(self, rng: random.Random) -> Prefs:
        """Two preferred categories (by popularity) with weights."""
        a, b = self._pick_category(rng), self._pick_category(rng)
        wa = rng.uniform(0.5, 0.9)
        return [(a, wa), (b, 1.0 - wa)] if a != b else [(a, 1.0)]

    def start(self, rng: random.Random, prefs: Prefs) -> int:
        """A session's first item: from a preferred category, by popularity."""
        return self.item(self._pick_pref(rng, prefs), self._pick_rank(rng))

    def next(self, rng: random.Random, prefs: Prefs, session: list[int], item: int) -> int:
        """The item after ``item`` in a session that saw ``session``."""
        x = rng.random()
        if x < self.p_next:
            return self.successor(item)
        x -= self.p_next
        if x < self.p_revisit:
            return rng.choice(list(dict.fromkeys(session)))
        x -= self.p_revisit
        if x < self.p_switch:
            return self.item(self._pick_category(rng), self._pick_rank(rng))
        return self.start(rng, prefs)

    def truth(self, prefs: Prefs, session: list[int], last: int) -> dict[str, float]:
        """The distribution :meth:`next` draws from, by item id."""
        probs: dict[int, float] = {}

        def add(item: int, p: float) -> None:
            probs[item] = probs.get(item, 0.0) + p

        add(self.successor(last), self.p_next)
        seen = list(dict.fromkeys(session))
        for item in seen:
            add(item, self.p_revisit / len(seen))
        for c in range(self.categories):
            for r in range(self.category_size):
                add(self.item(c, r), self.p_switch * self.cat_pop[c] * self.in_pop[r])
        rest = 1.0 - self.p_next - self.p_revisit - self.p_switch
        for c, w in prefs:
            for r in range(self.category_size):
                add(self.item(c, r), rest * w * self.in_pop[r])
        return {self.item_id(i): p for i, p in probs.items()}

    def _pick_category(self, rng: random.Random) -> int:
        return min(bisect_right(self._cat_cum, rng.random()), self.categories - 1)

    def _pick_rank(self, rng: random.Random) -> int:
        return min(bisect_right(self._in_cum, rng.random()), self.category_size - 1)

    @staticmethod
    def _pick_pref(rng: random.Random, prefs: Prefs) -> int:
        x = rng.random()
        for c, w in prefs:
            x -= w
            if x < 0:
                return c
        return prefs[-1][0]


@dataclass
class BrowseSim:
    """``users`` shoppers over ``days`` of event time from ``start_ms`` (seeded)."""

    users: int = 500
    items: int = 2_000
    category_size: int = 20
    days: float = 3.0
    sessions_per_user: float = 4.0  # mean
    session_events: float = 8.0  # mean events per session
    p_next: float = 0.45
    p_revisit: float = 0.15
    p_switch: float = 0.10
    campaign_share: float = 0.3  # views shown in a campaign of their category
    seed: int = 42
    start_ms: int = 1_700_000_000_000
    #: user -> (preferred categories with weights, current session's items, last item)
    state: dict[str, tuple[Prefs, list[int], int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.items % self.category_size:
            raise ValueError(
                f"items ({self.items}) must be a multiple of category_size ({self.category_size})"
            )
        self.catalog = Catalog(
            self.items, self.category_size, self.p_next, self.p_revisit, self.p_switch
        )
        self.item, self.successor = self.catalog.item, self.catalog.successor
        self.item_id = self.catalog.item_id

    def truth(self, user: str) -> dict[str, float]:
        """The true distribution of ``user``'s next item after the events so far."""
        return self.catalog.truth(*self.state[user])

    def top(self, user: str, k: int = 5) -> list[str]:
        """The ``k`` items ``user`` most likely views next (the ground truth)."""
        truth = self.truth(user)
        return sorted(truth, key=lambda i: (-truth[i], i))[:k]

    def events(self) -> list[dict[str, Any]]:
        """Every event of the run, in event-time order (contract format, epoch ms times)."""
        rng = random.Random(self.seed)
        span = int(self.days * 86_400_000)
        kinds = [k for k, _ in KIND_SHARES]
        kind_cum = list(accumulate(s for _, s in KIND_SHARES))
        out: list[dict[str, Any]] = []
        n_id = 0
        plans = []
        for u in range(self.users):
            user = f"shopper-{u:05d}"
            prefs = self.catalog.prefs(rng)
            sessions = 1 + int(rng.expovariate(1.0 / max(self.sessions_per_user - 1, 1e-9)))
            for _ in range(sessions):
                plans.append((rng.randrange(span), user, prefs))
        plans.sort()
        for start, user, prefs in plans:
            t = start
            session: list[int] = []
            item = self.catalog.start(rng, prefs)
            length = 1 + int(rng.expovariate(1.0 / max(self.session_events - 1, 1e-9)))
            for step in range(length):
                if step:
                    item = self.catalog.next(rng, prefs, session, item)
                    t += rng.randint(10_000, 180_000)
                session.append(item)
                self.state[user] = (prefs, list(dict.fromkeys(session)), item)
                kind = kinds[min(bisect_right(kind_cum, rng.random()), len(kinds) - 1)]
                n_id += 1
                ev: dict[str, Any] = {
                    "event_id": f"b{self.seed}-{n_id}",
                    "type": kind,
                    "event_time": self.start_ms + t,
                    "user_id": user,
                    "channel": "web",
                    "consent": {"marketing": True},
                }
                sku = self.item_id(item)
                if kind == "purchase":
                    price = round(5 + 95 * rng.random(), 2)
                    ev.update(order_id=f"o-{n_id}", revenue=price, currency="USD")
                    ev["items"] = [{"item_id": sku, "quantity": 1, "price": price}]
                else:
                    ev["item_id"] = sku
                    if kind == "view" and rng.random() < self.campaign_share:
                        ev["campaign_id"] = f"cmp-cat-{item // self.category_size % 10}"
                out.append(ev)
        out.sort(key=lambda e: e["event_time"])
        return out
