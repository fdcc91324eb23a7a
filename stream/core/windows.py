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
[(0, {('c', 'A', 'web'): [1, 0, 0, 0.0, 0, {}, {}]})]
>>> pw.add({"type": "click", "ts": 5_000, "campaign_id": "c", "channel": "web", "user_id": "u"})
'late'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from stream.core.fx import FxRates

RowKey = tuple[str, str, str]  # campaign_id, variant_id ("" when absent), channel
#: [views, clicks, purchases, revenue, carts, unconverted, revenue_by_currency]: revenue in
#: the reporting currency; unconverted: currency -> purchases without a rate (their amounts
#: are only in revenue_by_currency: currency -> original amount, converted ones included)
Row = list[Any]
TYPE_INDEX = {"view": 0, "click": 1, "purchase": 2, "add_to_cart": 4}
#: Types that may count without a campaign: a purchase is attributed to the last click
ATTRIBUTED = "purchase"


def new_row() -> Row:
    """An empty window row (:data:`Row`)."""
    return [0, 0, 0, 0.0, 0, {}, {}]


def row_of(flat: Sequence[Any]) -> Row:
    """The row of a stored ``[campaign, variant, channel, *row]`` list; rows of earlier
    releases (no carts, no currencies) read with zeros.

    >>> row_of(["c", "A", "web", 3, 1, 0, 0.0]), row_of(["c", "A", "web", 3, 1, 0, 0.0, 2])
    ([3, 1, 0, 0.0, 0, {}, {}], [3, 1, 0, 0.0, 2, {}, {}])
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
    ]


def add_row(acc: Row, row: Sequence[Any]) -> None:
    """Add ``row`` into ``acc`` (the amounts per currency merged).

    >>> acc = new_row()
    >>> add_row(acc, [1, 0, 1, 5.0, 0, {}, {"EUR": 4.5}])
    >>> add_row(acc, [0, 0, 1, 0.0, 0, {"JPY": 1}, {"JPY": 900.0}])
    >>> acc
    [1, 0, 2, 5.0, 0, {'JPY': 1}, {'EUR': 4.5, 'JPY': 900.0}]
    """
    for i, value in enumerate(row):
        if isinstance(value, dict):
            by = acc[i]
            for currency, amount in value.items():
                by[currency] = by.get(currency, 0) + amount
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
        self, size_ms: int, grace_ms: int, attribution_ms: int, fx: FxRates | None = None
    ) -> None:
        self.size_ms = size_ms
        #: converts purchases into the reporting currency (None: revenue summed as sent)
        self.fx = fx
        self.grace_ms = grace_ms
        self.attribution_ms = attribution_ms
        self.max_ts = -1
        self.closed_until = 0  # every window ending at or before this is closed
        self.open: dict[int, dict[RowKey, Row]] = {}
        self.last_click: dict[str, tuple[int, str, str, str]] = {}
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
            click = self.last_click.get(user)
            if click is None or not 0 <= ts - click[0] <= self.attribution_ms:
                self.unattributed += 1
                if ts > self.max_ts:
                    self.max_ts = ts
                return "unattributed"
            key = (click[1], click[2], click[3])
        if etype == "click":
            prev = self.last_click.get(user)
            if prev is None or ts >= prev[0]:
                self.last_click[user] = (ts, key[0], key[1], key[2])
                self.dirty_clicks.add(user)
        window = self.open.get(ws)
        if window is None:
            window = self.open[ws] = {}
        row = window.get(key)
        if row is None:
            row = window[key] = new_row()
        row[TYPE_INDEX[etype]] += 1
        if etype == "purchase":
            self._add_revenue(row, event)
        if ts > self.max_ts:
            self.max_ts = ts
        return key

    def _add_revenue(self, row: Row, event: Any) -> None:
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
        self.dirty_clicks.update(stale)
        self.next_sweep = self.max_ts + max(1, self.attribution_ms // SWEEPS_PER_TTL)
        return len(stale)

    def drain_clicks(self) -> list[tuple[str, list[Any] | None]]:
        """Changed last clicks since the previous call (``None`` = forgotten)."""
        out: list[tuple[str, list[Any] | None]] = []
        for user in self.dirty_clicks:
            click = self.last_click.get(user)
            out.append((user, None if click is None else list(click)))
        self.dirty_clicks.clear()
        return out

    def restore_clicks(self, items: Iterable[tuple[str, Sequence[Any]]]) -> None:
        for user, c in items:
            self.last_click[user] = (c[0], c[1], c[2], c[3])

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
    ) -> PartitionWindows:
        pw = cls(size_ms, grace_ms, attribution_ms, fx)
        pw.max_ts = state["max_ts"]
        pw.closed_until = state["closed_until"]
        pw.last_offset = state["last_offset"]
        pw.unattributed = state.get("unattributed", 0)
        pw.open = {
            int(ws): {(r[0], r[1], r[2]): row_of(r) for r in rows}
            for ws, rows in state["open"].items()
        }
        return pw
