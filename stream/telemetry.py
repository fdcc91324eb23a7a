"""Prometheus metrics of the public contract (names in PRODUCT.md), with cached children.

Labels stay bounded: type, channel, reason — never a user.

>>> m = PulseMetrics()
>>> m.count_events([{"type": "view", "channel": "web", "ts": 0}], now_ms=1000)
>>> m.registry.get_sample_value("pulse_events_total", {"type": "view", "channel": "web"})
1.0
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

from prometheus_client import (
    CollectorRegistry,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from stream.core.campaigns import SETTINGS_REASONS
from stream.core.identity import OUTCOMES
from stream.core.stageclock import StageClock

disable_created_metrics()  # no *_created series: they double the scrape for no dashboard use

#: The metric names of the public contract (PRODUCT.md, "Prometheus metric names").
CONTRACT_METRICS = frozenset(
    {
        "pulse_events_total",
        "pulse_events_invalid_total",
        "pulse_events_duplicate_total",
        "pulse_events_late_total",
        "pulse_campaign_views_total",
        "pulse_campaign_clicks_total",
        "pulse_campaign_purchases_total",
        "pulse_campaign_revenue_total",
        "pulse_campaign_spend_total",
        "pulse_campaign_ctr",
        "pulse_campaign_cvr",
        "pulse_campaign_roas",
        "pulse_triggers_total",
        "pulse_triggers_suppressed_total",
        "pulse_model_rocauc",
        "pulse_model_logloss",
        "pulse_model_drift_total",
        "pulse_event_lag_seconds",
        "pulse_trigger_latency_seconds",
        "pulse_segment_unmapped_total",
        "pulse_revenue_unconverted_total",
    }
)

LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)


#: distinct Segment event names given their own ``pulse_segment_unmapped_total`` series
MAX_UNMAPPED_NAMES = 100
#: the ``table`` label values of ``pulse_state_records_refused_total``
STATE_TABLES = ("windows", "clicks", "models", "merger", "dedup", "identities", "recommenders")
#: distinct currencies given their own ``pulse_revenue_unconverted_total`` series (ISO 4217
#: has about 180)
MAX_CURRENCIES = 200


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
        self.event_lag = BatchHistogram(
            "pulse_event_lag_seconds", "Processing time minus event time", LAG_BUCKETS, r
        )
        self.late = PromCounter("pulse_events_late", "Events after their window closed", registry=r)
        labels = ["campaign_id", "variant_id", "channel"]
        self.campaign_totals = CampaignTotals(r)
        self.spend = PromCounter("pulse_campaign_spend", "Spend (cost model)", labels, registry=r)
        gauge_labels = ["campaign_id", "variant_id"]
        self.ctr = Gauge("pulse_campaign_ctr", "CTR, last closed window", gauge_labels, registry=r)
        self.cvr = Gauge("pulse_campaign_cvr", "CVR, last closed window", gauge_labels, registry=r)
        self.roas = Gauge(
            "pulse_campaign_roas", "ROAS, last closed window", gauge_labels, registry=r
        )
        self.triggers = PromCounter(
            "pulse_triggers", "Triggers emitted", ["action", "rule"], registry=r
        )
        self.suppressed = PromCounter(
            "pulse_triggers_suppressed",
            "Triggers held back by a rail",
            ["rule", "reason"],
            registry=r,
        )
        self.trigger_latency = Histogram(
            "pulse_trigger_latency_seconds",
            "Window end (its last event) to trigger sent",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.model_rocauc = Gauge(
            "pulse_model_rocauc", "Progressive-validation ROC AUC", ["model"], registry=r
        )
        self.model_logloss = Gauge(
            "pulse_model_logloss", "Progressive-validation log loss", ["model"], registry=r
        )
        self.model_drift = PromCounter(
            "pulse_model_drift", "Drift detections", ["model"], registry=r
        )
        self.segment_events = PromCounter(
            "pulse_segment_events",
            "Events by the user's RFM segment",
            ["segment", "type"],
            registry=r,
        )
        self.windows_emitted = PromCounter(
            "pulse_windows_emitted", "Window records written to pulse.metrics", registry=r
        )
        self.http_requests = PromCounter(
            "pulse_http_requests", "Collector requests by status code", ["status"], registry=r
        )
        self.settings_rejected = PromCounter(
            "pulse_campaign_settings_rejected",
            "pulse.campaigns values rejected (the campaign keeps its previous settings)",
            ["reason"],
            registry=r,
        )
        for reason in SETTINGS_REASONS:  # every bounded reason exported from the start, at 0
            self.settings_rejected.labels(reason)
        self.segment_unmapped = PromCounter(
            "pulse_segment_unmapped",
            "Segment events with no mapping to a Pulse type (dropped)",
            ["event"],
            registry=r,
        )
        self.unconverted = PromCounter(
            "pulse_revenue_unconverted",
            "Purchases without an exchange rate into the reporting currency (not in revenue)",
            ["currency"],
            registry=r,
        )
        self.state_refused = PromCounter(
            "pulse_state_records_refused",
            "State records that did not decode or authenticate (the restore stopped)",
            ["table"],
            registry=r,
        )
        for table in STATE_TABLES:  # exported from the start, at 0
            self.state_refused.labels(table)
        self.identity_links = PromCounter(
            "pulse_identity_links",
            "Identity links asked for (anonymous id or alias with a user id), by outcome",
            ["outcome"],
            registry=r,
        )
        for outcome in OUTCOMES:
            self.identity_links.labels(outcome)
        self.identity_handovers = PromCounter(
            "pulse_identity_handovers",
            "Ids whose clicks were handed to the identity they were merged into",
            registry=r,
        )
        self.clock = StageClock()  # the pipeline's stages add their CPU time to it
        r.register(StageCpu(self.clock))
        self._children: dict[tuple[str, ...], Any] = {}
        self._distinct: dict[str, int] = {}  # metric -> label values given a series

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def count_events(self, events: Iterable[Mapping[str, Any]], now_ms: int) -> None:
        """Count valid events by (type, channel) and observe their event-time lag."""
        counts: Counter[tuple[str, str]] = Counter()
        lags_ms = []
        for e in events:
            counts[(e["type"], e["channel"])] += 1
            lags_ms.append(now_ms - e["ts"])
        self.event_lag.observe_ms(lags_ms)
        for (etype, channel), n in counts.items():
            self._child(self.events, etype, channel).inc(n)

    def count_campaign_events(self, counted: Iterable[tuple[tuple[str, str, str], Any]]) -> None:
        """Running campaign totals from ``(row key, event)``; purchases use their attribution
        and their revenue in the reporting currency; those without a rate count as
        ``pulse_revenue_unconverted_total{currency}`` (currencies are ISO 4217 codes)."""
        self.campaign_totals.add(counted)
        for _, e in counted:
            if e["type"] == "purchase" and e.get("revenue_reporting", 0.0) is None:
                code = str(e.get("currency", "")).upper()[:3]  # three letters chosen by trackers
                self._bounded_child(self.unconverted, code, MAX_CURRENCIES).inc()

    def observe_windows(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Spend totals and last-window rate gauges from closed window records."""
        per_variant: dict[tuple[str, str], list[float]] = {}
        n = 0
        for r in records:
            n += 1
            vid = r["variant_id"] or ""
            if r["spend"]:
                self._child(self.spend, r["campaign_id"], vid, r["channel"]).inc(r["spend"])
            acc = per_variant.setdefault((r["campaign_id"], vid), [0, 0, 0, 0.0, 0.0])
            acc[0] += r["views"]
            acc[1] += r["clicks"]
            acc[2] += r["purchases"]
            acc[3] += r["revenue"]
            acc[4] += r["spend"] or 0.0
        for (cid, vid), (views, clicks, purchases, revenue, spend) in per_variant.items():
            if views:
                self._child(self.ctr, cid, vid).set(clicks / views)
            if clicks:
                self._child(self.cvr, cid, vid).set(purchases / clicks)
            if spend:
                self._child(self.roas, cid, vid).set(revenue / spend)
        self.windows_emitted.inc(n)

    def count_triggers(self, triggers: Iterable[Mapping[str, Any]], now_ms: int) -> None:
        for t in triggers:
            self._child(self.triggers, t["action"], t["rule"]).inc()
            self.trigger_latency.observe(max(0.0, (now_ms - t["evidence"]["window_end"]) / 1000))

    def count_segments(self, segments: Iterable[tuple[int, str]]) -> None:
        counts = Counter(segments)
        for (segment, etype), n in counts.items():
            self._child(self.segment_events, str(segment), etype).inc(n)

    def count_identity(self, outcomes: Iterable[str], handovers: int) -> None:
        for outcome, n in Counter(outcomes).items():
            self._child(self.identity_links, outcome).inc(n)
        if handovers:
            self.identity_handovers.inc(handovers)

    def observe_model(self, model: str, rocauc: float, logloss: float) -> None:
        self._child(self.model_rocauc, model).set(rocauc)
        self._child(self.model_logloss, model).set(logloss)

    def count_suppressed(self, held: Iterable[tuple[str, str]]) -> None:
        for rule, reason in held:
            self._child(self.suppressed, rule, reason).inc()

    def count_invalid(self, reasons: Mapping[str, int]) -> None:
        for reason, n in reasons.items():
            self._child(self.invalid, reason).inc(n)

    def count_segment_unmapped(self, names: Mapping[str, int]) -> None:
        """Count dropped Segment events by name; past :data:`MAX_UNMAPPED_NAMES` distinct
        names (names are chosen by trackers), the rest count as ``(other)``.

        >>> m = PulseMetrics()
        >>> m.count_segment_unmapped({"Signed Up": 2})
        >>> m.registry.get_sample_value("pulse_segment_unmapped_total", {"event": "Signed Up"})
        2.0
        """
        for name, n in names.items():
            self._bounded_child(self.segment_unmapped, name[:100], MAX_UNMAPPED_NAMES).inc(n)

    def _bounded_child(self, metric: Any, label: str, limit: int) -> Any:
        """The child of a one-label ``metric`` whose values are chosen by trackers: past
        ``limit`` distinct values, new ones count as ``(other)``."""
        if (metric._name, label) not in self._children:
            seen = self._distinct.get(metric._name, 0)
            if seen >= limit:
                label = "(other)"
            else:
                self._distinct[metric._name] = seen + 1
        return self._child(metric, label)

    def count_settings_rejected(self, reason: str) -> None:
        """One rejected ``pulse.campaigns`` value; ``reason`` is the setting at fault."""
        self._child(self.settings_rejected, reason).inc()

    def count_http(self, status: int) -> None:
        self._child(self.http_requests, str(status)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class CampaignTotals:
    """``pulse_campaign_{views,clicks,purchases,revenue}_total`` kept as plain lists.

    A Prometheus child per campaign × variant × channel costs a label lookup
    and a lock per increment; these totals are plain additions per event and
    become metric families only when scraped.

    >>> r = CollectorRegistry()
    >>> t = CampaignTotals(r)
    >>> t.add([(("c", "A", "web"), {"type": "purchase", "revenue": 5.0})])
    >>> r.get_sample_value("pulse_campaign_revenue_total", {"campaign_id": "c",
    ...                    "variant_id": "A", "channel": "web"})
    5.0
    """

    FAMILIES = (
        ("pulse_campaign_views", "Views"),
        ("pulse_campaign_clicks", "Clicks"),
        ("pulse_campaign_purchases", "Attributed purchases"),
        ("pulse_campaign_revenue", "Attributed revenue"),
    )
    INDEX: ClassVar[dict[str, int]] = {"view": 0, "click": 1, "purchase": 2}

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rows: dict[tuple[str, str, str], list[float]] = {}
        registry.register(self)

    def add(self, counted: Iterable[tuple[tuple[str, str, str], Any]]) -> None:
        rows, index = self.rows, self.INDEX
        for key, e in counted:
            row = rows.get(key)
            if row is None:
                row = rows[key] = [0, 0, 0, 0.0]
            etype = e["type"]
            i = index.get(etype)
            if i is None:  # add-to-carts are in the window records, not in these totals
                continue
            row[i] += 1
            if etype == "purchase":  # in the reporting currency; None: no rate
                row[3] += e.get("revenue_reporting", e.get("revenue")) or 0.0

    def collect(self) -> Iterator[Metric]:
        labels = ["campaign_id", "variant_id", "channel"]
        families = [CounterMetricFamily(n, h, labels=labels) for n, h in self.FAMILIES]
        for key, row in list(self.rows.items()):
            for family, value in zip(families, row, strict=True):
                family.add_metric(key, value)
        yield from families


class StageCpu:
    """``pulse_stage_cpu_seconds_total{stage}``: a :class:`StageClock`'s totals at scrape time.

    >>> r = CollectorRegistry()
    >>> clock = StageClock()
    >>> _ = r.register(StageCpu(clock))
    >>> clock.ns["dedup"] += 2_500_000_000
    >>> r.get_sample_value("pulse_stage_cpu_seconds_total", {"stage": "dedup"})
    2.5
    """

    def __init__(self, clock: StageClock) -> None:
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "pulse_stage_cpu_seconds",
            "CPU time spent in each pipeline stage (per chunk of records)",
            labels=["stage"],
        )
        for stage, seconds in self.clock.seconds().items():
            family.add_metric([stage], seconds)
        yield family


class BatchHistogram:
    """A label-free Prometheus histogram observed a batch at a time (no lock per value).

    >>> r = CollectorRegistry()
    >>> h = BatchHistogram("lag_seconds", "Lag", (1, 5), r)
    >>> h.observe_ms([500, 3000, 9000, -20])
    >>> r.get_sample_value("lag_seconds_bucket", {"le": "5.0"})
    3.0
    >>> r.get_sample_value("lag_seconds_sum")
    12.5
    """

    def __init__(
        self, name: str, documentation: str, buckets: Iterable[float], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = [float(b) for b in buckets]
        self._bounds_ms = [b * 1000 for b in self.bounds]
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        registry.register(self)

    def observe_ms(self, values_ms: Iterable[float]) -> None:
        """Observe durations given in milliseconds (negative ones count as 0)."""
        counts, bounds = self.counts, self._bounds_ms
        total = 0.0
        for v in values_ms:
            if v < 0:
                v = 0
            counts[bisect_left(bounds, v)] += 1
            total += v
        self.sum += total / 1000

    def collect(self) -> Iterator[Metric]:
        cumulative, buckets = 0, []
        for bound, n in zip([*self.bounds, float("inf")], self.counts, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else str(bound), float(cumulative)))
        yield HistogramMetricFamily(
            self.name, self.documentation, buckets=buckets, sum_value=self.sum
        )
