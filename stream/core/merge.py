"""Merge per-partition window partials into final, once-only window records.

Each source partition reports ``(partition, closed_until, windows)`` in order;
a window is final when every partition's ``closed_until`` has passed its end.
A partial repeated after a crash (its windows already covered by that
partition's progress) is ignored, so nothing is counted twice.

>>> m = WindowMerger(partitions=2, size_ms=10)
>>> m.add_partial(0, 10, [(0, {("c", "A", "web"): [2, 1, 0, 0.0, 0]})])
>>> m.ready()
[]
>>> m.add_partial(1, 12, [(0, {("c", "A", "web"): [1, 0, 0, 0.0, 1]})])
>>> m.ready()
[(0, {('c', 'A', 'web'): [3, 1, 0, 0.0, 1, {}, {}, {}, {}]})]
>>> m.add_partial(1, 12, [(0, {("c", "A", "web"): [1, 0, 0, 0.0, 1]})])  # replayed: ignored
>>> m.ready()
[]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from stream.core.windows import Row, RowKey, add_row, new_row, row_of


class WindowMerger:
    def __init__(self, partitions: int, size_ms: int) -> None:
        self.partitions = partitions
        self.size_ms = size_ms
        self.progress: dict[int, int] = {}
        self.pending: dict[int, dict[RowKey, Row]] = {}
        self.emitted_until = 0
        self.last_offset = -1

    def add_partial(
        self, partition: int, closed_until: int, windows: Iterable[tuple[int, Mapping[RowKey, Row]]]
    ) -> None:
        before = self.progress.get(partition, -1)
        for ws, rows in windows:
            if ws + self.size_ms <= before or ws + self.size_ms <= self.emitted_until:
                continue  # already merged (a replayed partial)
            target = self.pending.setdefault(ws, {})
            for key, row in rows.items():
                acc = target.get(key)
                if acc is None:
                    acc = target[key] = new_row()
                add_row(acc, row)  # a row of an older release is shorter
        if closed_until > before:
            self.progress[partition] = closed_until

    @property
    def low_watermark(self) -> int:
        if len(self.progress) < self.partitions:
            return -1
        return min(self.progress.values())

    def ready(self) -> list[tuple[int, dict[RowKey, Row]]]:
        """Windows every partition has closed, oldest first (each returned once)."""
        low = self.low_watermark
        if low <= self.emitted_until:
            return []
        done = sorted(ws for ws in self.pending if ws + self.size_ms <= low)
        self.emitted_until = low
        return [(ws, self.pending.pop(ws)) for ws in done]

    def to_state(self) -> dict[str, Any]:
        return {
            "progress": {str(p): v for p, v in self.progress.items()},
            "pending": {
                str(ws): [[*k, *v] for k, v in rows.items()] for ws, rows in self.pending.items()
            },
            "emitted_until": self.emitted_until,
            "last_offset": self.last_offset,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], partitions: int, size_ms: int) -> WindowMerger:
        m = cls(partitions, size_ms)
        m.progress = {int(p): v for p, v in state["progress"].items()}
        m.pending = {
            int(ws): {(r[0], r[1], r[2]): row_of(r) for r in rows}
            for ws, rows in state["pending"].items()
        }
        m.emitted_until = state["emitted_until"]
        m.last_offset = state["last_offset"]
        return m


class EmittedOutputs:
    """Outputs a merger sent after its last snapshot, so a replay does not send them again.

    A merger emits, then snapshots. If it dies in between, the restored snapshot
    is one step behind its outputs and replaying the partials re-derives the
    same window records and triggers. On recovery the agent reads its output
    topics back from the snapshot's time and :meth:`learn` keeps what belongs to
    windows the snapshot had not emitted yet (``window_end > emitted_until``,
    exact because ``emitted_until`` only grows). :meth:`drop_repeats` then
    filters those out of the replayed step, whose records and trigger ids are
    deterministic (same partials, same restored engine state).

    >>> e = EmittedOutputs()
    >>> rec = {"campaign_id": "c", "variant_id": "A", "channel": "web", "window_start": 10,
    ...        "window_end": 20}
    >>> e.learn([rec, {**rec, "window_start": 0, "window_end": 10}], [], emitted_until=10)
    >>> len(e)
    1
    >>> e.drop_repeats([rec, {**rec, "channel": "sms"}], [], emitted_until=20)
    ([{'campaign_id': 'c', 'variant_id': 'A', 'channel': 'sms', 'window_start': 10, \
'window_end': 20}], [])
    >>> len(e), e.dropped
    (0, 1)
    """

    def __init__(self) -> None:
        self.keys: set[tuple[Any, ...]] = set()
        self.until = 0  # the largest window end learned: nothing to filter past it
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.keys)

    @staticmethod
    def record_key(r: Mapping[str, Any]) -> tuple[Any, ...]:
        return ("m", r["campaign_id"], r["variant_id"], r["channel"], r["window_start"])

    def learn(
        self,
        records: Iterable[Mapping[str, Any]],
        triggers: Iterable[Mapping[str, Any]],
        emitted_until: int,
    ) -> None:
        """Remember records and campaign triggers of windows past ``emitted_until``."""
        for r in records:
            if r["window_end"] > emitted_until:
                self.keys.add(self.record_key(r))
                self.until = max(self.until, r["window_end"])
        for t in triggers:
            ev = t.get("evidence") or {}
            end = ev.get("window_end")
            if str(t.get("action", "")).startswith("campaign.") and end and end > emitted_until:
                self.keys.add(("t", t["trigger_id"]))
                self.until = max(self.until, end)

    def drop_repeats(
        self,
        records: list[dict[str, Any]],
        triggers: list[dict[str, Any]],
        emitted_until: int,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The records and triggers not already sent; forget everything once past ``until``."""
        if not self.keys:
            return records, triggers
        keys = self.keys
        fresh = [r for r in records if self.record_key(r) not in keys]
        fresh_t = [t for t in triggers if ("t", t["trigger_id"]) not in keys]
        self.dropped += len(records) - len(fresh) + len(triggers) - len(fresh_t)
        keys.difference_update(self.record_key(r) for r in records)
        keys.difference_update(("t", t["trigger_id"]) for t in triggers)
        if emitted_until >= self.until:
            keys.clear()
        return fresh, fresh_t


def encode_windows(windows: Iterable[tuple[int, Mapping[RowKey, Row]]]) -> list[Any]:
    """JSON-friendly windows: ``[[ws, [[c, v, ch, views, clicks, purchases, revenue,
    carts]]]]``."""
    return [[ws, [[*k, *v] for k, v in rows.items()]] for ws, rows in windows]


def decode_windows(data: Iterable[Any]) -> list[tuple[int, dict[RowKey, Row]]]:
    return [(ws, {(r[0], r[1], r[2]): row_of(r) for r in rows}) for ws, rows in data]
