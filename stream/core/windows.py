"""Event-time tumbling windows per source partition, with watermark, lateness and attribution.

One :class:`PartitionWindows` per Kafka partition of ``pulse.events``. Events add
counts to their window; the partition's watermark (max event time − grace)
closes windows, whose *partial* rows are then merged across partitions by
:class:`stream.core.merge.WindowMerger`.

>>> pw = PartitionWindows(size_ms=60_000, grace_ms=10_000, attribution_ms=3_600_000)
>>> pw.add({"type": "view", "ts": 1_000, "campaign_id": "c", "variant_id": "A",
...         "channel": "web", "user_id": "u"})
('c', 'A', 'web')
>>> pw.add({"type": "view", "ts": 75_000, "campaign_id": "c", "channel": "web", "user_id": "u"})
('c', '', 'web')
>>> pw.add({"type": "view", "ts": 2_000, "item_id": "sku-9", "channel": "web", "user_id": "u"})
'item'
>>> [(ws, rows) for ws, rows in pw.close()]
[(0, {('c', 'A', 'web'): [1, 0, 0, 0.0, 0, {}, {}, {}, {}]})]
>>> pw.add({"type": "click", "ts": 5_000, "campaign_id": "c", "channel": "web", "user_id": "u"})
'late'
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from stream.core.attribution import DEFAULT_HALF_LIFE_MS, MODELS, START, weights
from stream.core.fx import FxRates

RowKey = tuple[str, str, str]  # campaign_id, variant_id ("" when absent), channel
#: [views, clicks, purchases, revenue, carts, unconverted, revenue_by_currency, attributed,
#: steps]: revenue in the reporting currency; unconverted: currency -> purchases without a
#: rate (their amounts are only in revenue_by_currency: currency -> original amount,
#: converted ones included); attributed: model -> [purchases, revenue] credited to this row
#: by the attribution models (stream.core.attribution.MODELS) over the users' touches;
#: steps: the journeys' steps into this row's clicks (``campaign:<previous campaign>`` and
#: ``channel:<previous channel>``, ``(start)`` for a journey's first click) and out of them
#: into a purchase (``conversion``, with its revenue as ``value``): the Markov chain's data
Row = list[Any]
Touch = tuple[int, str, str, str]  # time, campaign, variant, channel
#: clicks kept per user for multi-touch credit (the last one and up to 15 before it)
MAX_TOUCHES = 16
TYPE_INDEX = {"view": 0, "click": 1, "purchase": 2, "add_to_cart": 4}
#: Types that may count without a campaign: a purchase is attributed to the last click
ATTRIBUTED = "purchase"


def new_row() -> Row:
    """An empty window row (:data:`Row`)."""
    return [0, 0, 0, 0.0, 0, {}, {}, {}, {}]


def row_of(flat: Sequence[Any]) -> Row:
    """The row of a stored ``[campaign, variant, channel, *row]`` list; rows of earlier
    releases (no carts, no currencies) read with zeros.

    >>> row_of(["c", "A", "web", 3, 1, 0, 0.0]), row_of(["c", "A", "web", 3, 1, 0, 0.0, 2])
    ([3, 1, 0, 0.0, 0, {}, {}, {}, {}], [3, 1, 0, 0.0, 2, {}, {}, {}, {}])
    """
    n = len(flat)
    return [
        flat[3],
        flat[4],
        flat[5],
        flat[6],
        flat[7] if n > 7 else 0,
        dict(flat[8]) if n > 8 else {},
        dict(flat[9]) if n > 9 else {},
        {m: list(v) for m, v in flat[10].items()} if n > 10 else {},
        dict(flat[11]) if n > 11 else {},
    ]


def add_row(acc: Row, row: Sequence[Any]) -> None:
    """Add ``row`` into ``acc`` (the amounts per currency merged).

    >>> acc = new_row()
    >>> add_row(acc, [1, 0, 1, 5.0, 0, {}, {"EUR": 4.5}, {"linear": [0.5, 2.25]}])
    >>> add_row(acc, [0, 0, 1, 0.0, 0, {"JPY": 1}, {"JPY": 900.0}, {"linear": [0.5, 0.0]}])
    >>> acc[:8]
    [1, 0, 2, 5.0, 0, {'JPY': 1}, {'EUR': 4.5, 'JPY': 900.0}, {'linear': [1.0, 2.25]}]
    """
    for i, value in enumerate(row):
        if isinstance(value, dict):
            by = acc[i]
            for name, amount in value.items():
                if isinstance(amount, list):
                    have = by.setdefault(name, [0.0] * len(amount))
                    for j, x in enumerate(amount):
                        have[j] += x
                else:
                    by[name] = by.get(name, 0) + amount
        else:
            acc[i] += value


SWEEPS_PER_TTL = 8  # last clicks are swept each time event time advances by 1/8 of their TTL


def window_start(ts_ms: int, size_ms: int) -> int:
    """Start of the tumbling window holding ``ts_ms``.

    >>> window_start(119_999, 60_000), window_start(120_000, 60_000)
    (60000, 120000)
    """
    return ts_ms - ts_ms % size_ms


class PartitionWindows:
    """Open windows, watermark and last clicks of one source partition.

    Memory is bounded in event time: a window leaves ``open`` when the watermark
    passes its end, and a user's last click leaves ``last_click`` once no event
    that is still on time could be attributed to it (older than attribution
    window + grace + window size behind the newest event). :meth:`close` sweeps
    ``last_click`` each time the newest event time has advanced by
    1/:data:`SWEEPS_PER_TTL` of the attribution window: one pass over the dict
    per sweep, never per event, so it holds at most the users who clicked within
    ``attribution + grace + size`` plus one sweep period.
    """

    def __init__(
        self,
        size_ms: int,
        grace_ms: int,
        attribution_ms: int,
        fx: FxRates | None = None,
        half_life_ms: float = DEFAULT_HALF_LIFE_MS,
        views_touch: bool = False,
    ) -> None:
        self.size_ms = size_ms
        #: the event types that are touches: clicks, and views with PULSE_ATTRIBUTION_TOUCHES=views
        self.touch_types = ("click", "view") if views_touch else ("click",)
        self.half_life_ms = half_life_ms  # of the time-decay attribution model
        #: converts purchases into the reporting currency (None: revenue summed as sent)
        self.fx = fx
        self.grace_ms = grace_ms
        self.attribution_ms = attribution_ms
        self.max_ts = -1
        self.closed_until = 0  # every window ending at or before this is closed
        self.open: dict[int, dict[RowKey, Row]] = {}
        self.last_click: dict[str, Touch] = {}
        #: the clicks before each user's last one (oldest first, at most MAX_TOUCHES - 1)
        self.earlier: dict[str, list[Touch]] = {}
        #: times of the users' purchases that ended a journey (oldest first): a click
        #: after one starts a new journey (the Markov chain's steps)
        self.converted: dict[str, list[int]] = {}
        self.last_offset = -1  # highest source offset already applied (idempotent replays)
        self.unattributed = 0
        self.dirty_clicks: set[str] = set()  # users whose last click changed or expired
        self.next_sweep = 0  # max_ts at which close() sweeps last clicks (not persisted)

    @property
    def watermark(self) -> int:
        return self.max_ts - self.grace_ms

    def add(self, event: Mapping[str, Any]) -> RowKey | str:
        """Count one valid event; return its row key, or ``late`` / ``unattributed``, or
        ``item`` / ``identify`` for events that belong to no campaign window (a product
        viewed, clicked or added outside any campaign; an identity link): those move the
        partition's event time on but are never late, since no window waits for them."""
        ts = event["ts"]
        etype = event["type"]
        if etype == "identify" or ("campaign_id" not in event and etype != ATTRIBUTED):
            if ts > self.max_ts:
                self.max_ts = ts
            return "identify" if etype == "identify" else "item"
        ws = ts - ts % self.size_ms
        # Late against the watermark as of this event, not as of the last close():
        # the decision must not depend on where batch boundaries fall (replays).
        if ws + self.size_ms <= max(self.closed_until, self.max_ts - self.grace_ms):
            return "late"
        user = event.get("user_id") or event.get("anonymous_id") or ""
        campaign = event.get("campaign_id")
        if campaign is not None:
            key = (campaign, event.get("variant_id") or "", event["channel"])
        else:  # purchase without campaign: the user's last click inside the attribution window
            # (the newest click at or before it: a replay after a crash restores clicks of
            # later events too, and must attribute as the first run did)
            touches = self.touches(user, ts)
            if not touches:
                self.unattributed += 1
                if ts > self.max_ts:
                    self.max_ts = ts
                return "unattributed"
            click = touches[-1]
            key = (click[1], click[2], click[3])
        touch = etype in self.touch_types
        if touch:
            came_from = self._previous(user, ts)
            self._touch(user, (ts, key[0], key[1], key[2]))
        window = self.open.get(ws)
        if window is None:
            window = self.open[ws] = {}
        row = window.get(key)
        if row is None:
            row = window[key] = new_row()
        row[TYPE_INDEX[etype]] += 1
        if touch:
            steps = row[8]
            for step in (
                "campaign:" + (came_from[1] if came_from else START),
                "channel:" + (came_from[3] if came_from else START),
            ):
                steps[step] = steps.get(step, 0) + 1
        elif etype == "purchase":
            value = self._add_revenue(row, event)
            self._credit(window, key, user, ts, value or 0.0)
        if ts > self.max_ts:
            self.max_ts = ts
        return key

    def _touch(self, user: str, touch: Touch) -> None:
        """A click: the user's last click, or an earlier touch when it arrived out of order.

        Idempotent: a click already held (a batch replayed over restored clicks) is
        not added again.
        """
        prev = self.last_click.get(user)
        before = self.earlier.get(user)
        if touch == prev or (before is not None and touch in before):
            return
        if prev is not None and touch[0] < prev[0]:  # out of order: an earlier touch
            bisect.insort(self.earlier.setdefault(user, []), touch)
        else:
            self.last_click[user] = touch
            if prev is not None:
                self.earlier.setdefault(user, []).append(prev)
        before = self.earlier.get(user)
        if before is not None and len(before) >= MAX_TOUCHES:
            del before[: len(before) - MAX_TOUCHES + 1]
        self.dirty_clicks.add(user)

    def _previous(self, user: str, ts: int) -> Touch | None:
        """The click a journey steps from into a click at ``ts``: the user's newest click
        before it inside the attribution window, unless a purchase converted it since
        (then the click starts a new journey). Clicks held for later times (a replay
        over restored clicks) are not looked at, so a replay steps as the first run did.
        """
        last = self.last_click.get(user)
        if last is None:
            return None
        before = [t for t in (*self.earlier.get(user, ()), last) if t[0] < ts]
        if not before or before[-1][0] < ts - self.attribution_ms:
            return None
        prev = before[-1]
        if any(prev[0] <= x < ts for x in self.converted.get(user, ())):
            return None
        return prev

    def touches(self, user: str, ts: int) -> list[Touch]:
        """The user's clicks inside the attribution window up to ``ts``, oldest first."""
        last = self.last_click.get(user)
        if last is None:
            return []
        low = ts - self.attribution_ms
        return [t for t in (*self.earlier.get(user, ()), last) if low <= t[0] <= ts]

    def _credit(
        self, window: dict[RowKey, Row], key: RowKey, user: str, ts: int, revenue: float
    ) -> None:
        """Split one purchase over the user's touches, per attribution model.

        ``last_click`` credits the row the purchase is counted in; the other models
        weigh the touches inside the attribution window (without any, that row too).
        """
        touches = self.touches(user, ts)
        self._convert(window, user, ts, touches, revenue)
        for model in MODELS:
            if model == "last_click" or not touches:
                shares: list[tuple[RowKey, float]] = [(key, 1.0)]
            else:
                ages = [ts - t[0] for t in touches]
                w = weights(len(touches), model, ages, self.half_life_ms)
                shares = [((t[1], t[2], t[3]), x) for t, x in zip(touches, w, strict=True)]
            for target, share in shares:
                row = window.get(target)
                if row is None:
                    row = window[target] = new_row()
                credit = row[7].get(model)
                if credit is None:
                    credit = row[7][model] = [0.0, 0.0]
                credit[0] += share
                credit[1] += share * revenue

    def _convert(
        self, window: dict[RowKey, Row], user: str, ts: int, touches: list[Touch], revenue: float
    ) -> None:
        """A journey's step into a purchase, counted on the row of its last click.

        The journey is the touches since the user's previous conversion; a purchase
        with none (a second one after the same clicks) is no journey's end.
        """
        converted = self.converted.get(user)
        since = max((x for x in converted or () if x < ts), default=None)
        journey = [t for t in touches if since is None or t[0] > since]
        if not journey:
            return
        last = journey[-1]
        target = (last[1], last[2], last[3])
        row = window.get(target)
        if row is None:
            row = window[target] = new_row()
        steps = row[8]
        steps["conversion"] = steps.get("conversion", 0) + 1
        steps["value"] = steps.get("value", 0.0) + revenue
        if converted is None:
            converted = self.converted[user] = []
        if ts not in converted:  # a replayed purchase is the same conversion
            bisect.insort(converted, ts)
            del converted[:-MAX_TOUCHES]
            self.dirty_clicks.add(user)

    def _add_revenue(self, row: Row, event: Any) -> float | None:
        """Revenue in the reporting currency at the event's time, or an unconverted purchase.

        The event gets ``revenue_reporting`` (the converted amount, None without a
        rate) for the metrics and the model, which see the same number.
        """
        amount = float(event.get("revenue") or 0.0)
        fx = self.fx
        currency = str(event.get("currency") or (fx.reporting if fx else "")).upper()
        by = row[6]
        by[currency] = by.get(currency, 0.0) + amount
        value = amount if fx is None else fx.convert(amount, currency, event["ts"])
        event["revenue_reporting"] = value
        if value is None:
            row[5][currency] = row[5].get(currency, 0) + 1
        else:
            row[3] += value
        return value

    def close(self, watermark: int | None = None) -> list[tuple[int, dict[RowKey, Row]]]:
        """Close every window whose end is at or before the watermark; return them in order.

        ``watermark`` overrides the partition's own (idle partitions follow the others).
        """
        if self.max_ts >= self.next_sweep:
            self.expire_clicks()
        wm = self.watermark if watermark is None else max(watermark, self.watermark)
        if wm <= self.closed_until:
            return []
        self.closed_until = wm
        closed = sorted(ws for ws in self.open if ws + self.size_ms <= wm)
        return [(ws, self.open.pop(ws)) for ws in closed]

    @property
    def click_ttl_ms(self) -> int:
        """How far behind the newest event a last click can still attribute a purchase.

        An event is counted only if its window ends after the watermark, so its
        time is above ``max_ts - grace - size``; a click it can take is at most
        ``attribution`` older. Forgetting older clicks changes no count.
        """
        return self.attribution_ms + self.grace_ms + self.size_ms

    def expire_clicks(self) -> int:
        """Forget last clicks past :attr:`click_ttl_ms` (bounded memory); return how many.

        Forgotten users are marked dirty (their changelog entry gets a tombstone).

        >>> pw = PartitionWindows(size_ms=10, grace_ms=5, attribution_ms=100)
        >>> for ts, user in ((0, "a"), (50, "b"), (200, "c")):
        ...     _ = pw.add({"type": "click", "ts": ts, "campaign_id": "c",
        ...                 "channel": "web", "user_id": user})
        >>> pw.expire_clicks(), sorted(pw.last_click)  # cutoff 200 - 115 = 85
        (2, ['c'])
        """
        cutoff = self.max_ts - self.click_ttl_ms
        stale = [u for u, c in self.last_click.items() if c[0] < cutoff]
        for user in stale:
            del self.last_click[user]
            self.earlier.pop(user, None)
            self.converted.pop(user, None)
        self.dirty_clicks.update(stale)
        for user, times in self.converted.items():
            if times[0] < cutoff:
                times[:] = [x for x in times if x >= cutoff]
                self.dirty_clicks.add(user)
        for user in [u for u, times in self.converted.items() if not times]:
            del self.converted[user]
        for user, before in self.earlier.items():  # older touches of users still held
            if before[0][0] < cutoff:
                before[:] = [t for t in before if t[0] >= cutoff]
                self.dirty_clicks.add(user)
        for user in [u for u, before in self.earlier.items() if not before]:
            del self.earlier[user]
        self.next_sweep = self.max_ts + max(1, self.attribution_ms // SWEEPS_PER_TTL)
        return len(stale)

    def drain_clicks(self) -> list[tuple[str, list[Any] | None]]:
        """Changed clicks since the previous call: ``[*last click, [earlier touches],
        [conversion times]]`` (``None`` = forgotten)."""
        out: list[tuple[str, list[Any] | None]] = []
        for user in self.dirty_clicks:
            click = self.last_click.get(user)
            if click is None:
                out.append((user, None))
            else:
                earlier = [list(t) for t in self.earlier.get(user, ())]
                out.append((user, [*click, earlier, list(self.converted.get(user, ()))]))
        self.dirty_clicks.clear()
        return out

    def restore_clicks(self, items: Iterable[tuple[str, Sequence[Any]]]) -> None:
        """Clicks as :meth:`drain_clicks` gave them, with the partition at index 4 (the
        changelog's ``[ts, campaign, variant, channel, partition, earlier, converted]``;
        records of earlier releases lack the last two)."""
        for user, c in items:
            self.last_click[user] = (c[0], c[1], c[2], c[3])
            earlier = c[5] if len(c) > 5 else ()
            if earlier:
                self.earlier[user] = [(t[0], t[1], t[2], t[3]) for t in earlier]
            converted = c[6] if len(c) > 6 else ()
            if converted:
                self.converted[user] = [int(x) for x in converted]

    def take_user(self, user: str) -> dict[str, Any] | None:
        """Remove and return ``user``'s clicks and conversions (their state moves to the
        identity they were merged into); None when none are held."""
        last = self.last_click.pop(user, None)
        if last is None:
            return None
        self.dirty_clicks.add(user)
        clicks = [*self.earlier.pop(user, ()), last]
        return {"clicks": [list(t) for t in clicks], "converted": self.converted.pop(user, [])}

    def merge_user(self, user: str, taken: Mapping[str, Any]) -> None:
        """Add clicks and conversions of a merged id (:meth:`take_user`) to ``user``'s.

        Idempotent: clicks and conversions already held are not added again.
        """
        for c in sorted(tuple(t) for t in taken.get("clicks") or ()):
            self._touch(user, (int(c[0]), str(c[1]), str(c[2]), str(c[3])))
        times = taken.get("converted") or ()
        if times:
            held = self.converted.setdefault(user, [])
            for x in times:
                if x not in held:
                    bisect.insort(held, int(x))
            del held[:-MAX_TOUCHES]
            self.dirty_clicks.add(user)

    # --- snapshots for a changelog-backed table (last clicks live in their own table) ---
    def to_state(self) -> dict[str, Any]:
        return {
            "max_ts": self.max_ts,
            "closed_until": self.closed_until,
            "last_offset": self.last_offset,
            "unattributed": self.unattributed,
            "open": {
                str(ws): [[*k, *v] for k, v in rows.items()] for ws, rows in self.open.items()
            },
        }

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, Any],
        size_ms: int,
        grace_ms: int,
        attribution_ms: int,
        fx: FxRates | None = None,
        half_life_ms: float = DEFAULT_HALF_LIFE_MS,
        views_touch: bool = False,
    ) -> PartitionWindows:
        pw = cls(size_ms, grace_ms, attribution_ms, fx, half_life_ms, views_touch)
        pw.max_ts = state["max_ts"]
        pw.closed_until = state["closed_until"]
        pw.last_offset = state["last_offset"]
        pw.unattributed = state.get("unattributed", 0)
        pw.open = {
            int(ws): {(r[0], r[1], r[2]): row_of(r) for r in rows}
            for ws, rows in state["open"].items()
        }
        return pw
