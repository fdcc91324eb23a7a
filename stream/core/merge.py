"""Merge per-partition window partials into final, once-only window records.

Each source partition reports ``(partition, closed_until, windows)`` in order;
a window is final when every partition's ``closed_until`` has passed its end.
A partial repeated after a crash (its windows already covered by that
partition's progress) is ignored, so nothing is counted twice.

>>> m = WindowMerger(partitions=2, size_ms=10)
>>> m.add_partial(0, 10, [(0, {("c", "A", "web"): [2, 1, 0, 0.0]})])
>>> m.ready()
[]
>>> m.add_partial(1, 12, [(0, {("c", "A", "web"): [1, 0, 0, 0.0]})])
>>> m.ready()
[(0, {('c', 'A', 'web'): [3, 1, 0, 0.0]})]
>>> m.add_partial(1, 12, [(0, {("c", "A", "web"): [1, 0, 0, 0.0]})])  # replayed: ignored
>>> m.ready()
[]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from stream.core.windows import Row, RowKey


class WindowMerger:
    def __init__(self, partitions: int, size_ms: int) -> None:
        self.partitions = partitions
        self.size_ms = size_ms
        self.progress: dict[int, int] = {}
        self.pending: dict[int, dict[RowKey, Row]] = {}
        self.emitted_until = 0
        self.last_offset = -1
        self.ignored = 0

    def add_partial(
        self, partition: int, closed_until: int, windows: Iterable[tuple[int, Mapping[RowKey, Row]]]
    ) -> None:
        before = self.progress.get(partition, -1)
        for ws, rows in windows:
            if ws + self.size_ms <= before or ws + self.size_ms <= self.emitted_until:
                self.ignored += 1  # already merged (a replayed partial)
                continue
            target = self.pending.setdefault(ws, {})
            for key, row in rows.items():
                acc = target.get(key)
                if acc is None:
                    target[key] = list(row)
                else:
                    for i in range(4):
                        acc[i] += row[i]
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
            int(ws): {(r[0], r[1], r[2]): [r[3], r[4], r[5], r[6]] for r in rows}
            for ws, rows in state["pending"].items()
        }
        m.emitted_until = state["emitted_until"]
        m.last_offset = state["last_offset"]
        return m


def encode_windows(windows: Iterable[tuple[int, Mapping[RowKey, Row]]]) -> list[Any]:
    """JSON-friendly windows: ``[[ws, [[c, v, ch, views, clicks, purchases, revenue]]]]``."""
    return [[ws, [[*k, *v] for k, v in rows.items()]] for ws, rows in windows]


def decode_windows(data: Iterable[Any]) -> list[tuple[int, dict[RowKey, Row]]]:
    return [(ws, {(r[0], r[1], r[2]): [r[3], r[4], r[5], r[6]] for r in rows}) for ws, rows in data]
