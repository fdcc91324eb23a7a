"""Prometheus metrics of the public contract (names in PRODUCT.md), with cached children.

Labels stay bounded: type, channel, reason — never a user.

>>> m = PulseMetrics()
>>> m.count_events([{"type": "view", "channel": "web", "ts": 0}], now_ms=1000)
>>> m.registry.get_sample_value("pulse_events_total", {"type": "view", "channel": "web"})
1.0
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics, generate_latest
from prometheus_client import Counter as PromCounter

disable_created_metrics()  # no *_created series: they double the scrape for no dashboard use

LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)


class PulseMetrics:
    """All of a worker's Prometheus metrics in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = PromCounter(
            "pulse_events", "Valid, first-seen events processed", ["type", "channel"], registry=r
        )
        self.invalid = PromCounter(
            "pulse_events_invalid", "Events sent to the DLQ", ["reason"], registry=r
        )
        self.duplicates = PromCounter(
            "pulse_events_duplicate", "Repeats of a seen event_id", registry=r
        )
        self.event_lag = Histogram(
            "pulse_event_lag_seconds",
            "Processing time minus event time",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.http_requests = PromCounter(
            "pulse_http_requests", "Collector requests by status code", ["status"], registry=r
        )
        self._children: dict[tuple[str, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def count_events(self, events: Iterable[Mapping[str, Any]], now_ms: int) -> None:
        """Count valid events by (type, channel) and observe their event-time lag."""
        counts: Counter[tuple[str, str]] = Counter()
        observe = self.event_lag.observe
        for e in events:
            counts[(e["type"], e["channel"])] += 1
            observe(max(0.0, (now_ms - e["ts"]) / 1000))
        for (etype, channel), n in counts.items():
            self._child(self.events, etype, channel).inc(n)

    def count_invalid(self, reasons: Mapping[str, int]) -> None:
        for reason, n in reasons.items():
            self._child(self.invalid, reason).inc(n)

    def count_http(self, status: int) -> None:
        self._child(self.http_requests, str(status)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
