"""CPU time per pipeline stage, taken per chunk of records, never per event.

A :class:`StageClock` adds the calling thread's CPU time spent inside each
``with clock.stage(name):`` block to that stage's total. The worker exports the
totals as ``pulse_stage_cpu_seconds_total{stage}`` and ``make bench`` divides
them by the events of a drain: the per-stage table of µs per event. What no
stage covers (Kafka fetching and delivery, transactions, the event loop) is the
worker's CPU time minus their sum.

>>> clock = StageClock()
>>> with clock.stage("dedup"):
...     _ = sum(range(10_000))
>>> clock.seconds()["dedup"] > 0, clock.seconds()["windows"]
(True, 0.0)
"""

from __future__ import annotations

from time import thread_time_ns
from types import TracebackType

__all__ = ["STAGES", "StageClock"]

#: the stages, in pipeline order: parse + validate, dedup, window counts, the
#: propensity model and segments, merging partials and evaluating the campaign
#: trigger rules, encoding the state and outputs of a batch, metrics
STAGES = ("parse", "dedup", "windows", "model", "merge", "state", "metrics")


class _Timing:
    __slots__ = ("clock", "name", "t0")

    def __init__(self, clock: StageClock, name: str) -> None:
        self.clock, self.name, self.t0 = clock, name, 0

    def __enter__(self) -> None:
        self.t0 = thread_time_ns()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.clock.ns[self.name] += thread_time_ns() - self.t0


class StageClock:
    """Nanoseconds of thread CPU time per stage of :data:`STAGES`."""

    def __init__(self) -> None:
        self.ns: dict[str, int] = dict.fromkeys(STAGES, 0)
        self._timings = {name: _Timing(self, name) for name in STAGES}

    def stage(self, name: str) -> _Timing:
        """A context manager adding its block's CPU time to stage ``name`` (not re-entrant)."""
        return self._timings[name]

    def seconds(self) -> dict[str, float]:
        """CPU seconds per stage so far."""
        return {name: ns / 1e9 for name, ns in self.ns.items()}
