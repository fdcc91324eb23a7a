"""Faust's own health as Prometheus metrics: consumer lag and commit latency.

``pulse_consumer_lag{topic,partition}`` is computed at scrape time (highwater −
committed offset of each assigned partition); ``pulse_commit_latency_seconds``
is observed by a Faust sensor around every offset commit.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import faust
from prometheus_client import Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from stream.kafka.faust_internals import committed_offsets
from stream.telemetry import PulseMetrics


class CommitLatencySensor(faust.Sensor):
    def __init__(self, histogram: Histogram, **kwargs: Any) -> None:
        self.histogram = histogram
        super().__init__(**kwargs)

    def on_commit_initiated(self, consumer: Any) -> Any:
        return time.monotonic()

    def on_commit_completed(self, consumer: Any, state: Any) -> None:
        self.histogram.observe(time.monotonic() - state)


class ConsumerLagCollector(Collector):
    def __init__(self, app: faust.App) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "pulse_consumer_lag",
            "Records behind the partition's end (highwater − committed offset)",
            labels=["topic", "partition"],
        )
        consumer: Any = self.app.consumer
        try:
            assignment = consumer.assignment()
            committed = committed_offsets(self.app)
        except Exception:  # not started yet
            assignment, committed = set(), {}
        for tp in sorted(assignment):
            if tp.topic.endswith(("-changelog", "identities")):  # tables' changelogs
                continue
            try:
                highwater = consumer.highwater(tp)
            except Exception:
                continue
            if highwater is None or highwater < 0:
                continue
            done = committed.get(tp) or 0
            family.add_metric([tp.topic, str(tp.partition)], max(0, highwater - done))
        yield family


def install(app: faust.App, metrics: PulseMetrics) -> None:
    """Add the commit-latency sensor and the lag collector to a worker."""
    commit = Histogram(
        "pulse_commit_latency_seconds",
        "Offset commit latency",
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        registry=metrics.registry,
    )
    app.sensors.add(CommitLatencySensor(commit))
    metrics.registry.register(ConsumerLagCollector(app))
