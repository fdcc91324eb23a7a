"""Unit tests for stream.telemetry: counters, lag histogram and the exposition format."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from stream.telemetry import LAG_BUCKETS, PulseMetrics

NOW = 1_714_564_800_000


def ev(etype: str = "view", channel: str = "web", lag_s: float = 0.0) -> dict[str, Any]:
    return {"type": etype, "channel": channel, "ts": NOW - round(lag_s * 1000)}


def sample(m: PulseMetrics, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    return m.registry.get_sample_value(name, dict(labels or {}))


@pytest.mark.parametrize(
    ("batches", "expected"),
    [
        ([[]], {}),
        ([[ev()]], {("view", "web"): 1.0}),
        (
            [[ev(), ev(), ev("click", "email"), ev("purchase", "web")]],
            {("view", "web"): 2.0, ("click", "email"): 1.0, ("purchase", "web"): 1.0},
        ),
        (
            [[ev()], [ev(), ev("view", "sms")], []],
            {("view", "web"): 2.0, ("view", "sms"): 1.0},
        ),
    ],
    ids=["empty", "one", "mixed", "accumulates"],
)
def test_count_events(
    batches: list[list[dict[str, Any]]], expected: dict[tuple[str, str], float]
) -> None:
    m = PulseMetrics()
    for batch in batches:
        m.count_events(batch, now_ms=NOW)
    for (etype, channel), value in expected.items():
        labels = {"type": etype, "channel": channel}
        assert sample(m, "pulse_events_total", labels) == value
    assert sample(m, "pulse_events_total", {"type": "click", "channel": "web"}) is None
    total = sum(len(b) for b in batches)
    assert sample(m, "pulse_event_lag_seconds_count") == total


@pytest.mark.parametrize(
    ("calls", "expected"),
    [
        ([{}], {}),
        ([{"schema": 2}], {"schema": 2.0}),
        (
            [{"schema": 2, "too_large": 1}, {"schema": 3, "invalid_json": 4}],
            {"schema": 5.0, "too_large": 1.0, "invalid_json": 4.0},
        ),
    ],
    ids=["empty", "one", "accumulates"],
)
def test_count_invalid(calls: list[dict[str, int]], expected: dict[str, float]) -> None:
    m = PulseMetrics()
    for reasons in calls:
        m.count_invalid(reasons)
    for reason, value in expected.items():
        assert sample(m, "pulse_events_invalid_total", {"reason": reason}) == value
    assert sample(m, "pulse_events_invalid_total", {"reason": "not_object"}) is None


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([202], {"202": 1.0}),
        ([202, 202, 401, 429, 202], {"202": 3.0, "401": 1.0, "429": 1.0}),
    ],
)
def test_count_http(statuses: list[int], expected: dict[str, float]) -> None:
    m = PulseMetrics()
    for status in statuses:
        m.count_http(status)
    for label, value in expected.items():
        assert sample(m, "pulse_http_requests_total", {"status": label}) == value
    assert sample(m, "pulse_http_requests_total", {"status": "500"}) is None


def test_duplicates_counter() -> None:
    m = PulseMetrics()
    assert sample(m, "pulse_events_duplicate_total") == 0.0
    m.duplicates.inc(3)
    assert sample(m, "pulse_events_duplicate_total") == 3.0


def test_lag_histogram_observes_event_time_lag() -> None:
    m = PulseMetrics()
    lags = [0.04, 0.5, 1.0, 7.0, 4_000.0]
    future = {"type": "view", "channel": "web", "ts": NOW + 60_000}  # clamped to 0
    m.count_events([*(ev(lag_s=lag) for lag in lags), future], now_ms=NOW)

    assert sample(m, "pulse_event_lag_seconds_count") == 6.0
    assert sample(m, "pulse_event_lag_seconds_sum") == pytest.approx(sum(lags))
    all_lags = [*lags, 0.0]
    for bound in LAG_BUCKETS:
        le = str(float(bound))
        expected = sum(1 for lag in all_lags if lag <= bound)
        assert sample(m, "pulse_event_lag_seconds_bucket", {"le": le}) == expected, le
    assert sample(m, "pulse_event_lag_seconds_bucket", {"le": "+Inf"}) == 6.0


def test_registries_are_isolated() -> None:
    a, b = PulseMetrics(), PulseMetrics()
    a.count_http(202)
    assert sample(a, "pulse_http_requests_total", {"status": "202"}) == 1.0
    assert sample(b, "pulse_http_requests_total", {"status": "202"}) is None
    assert REGISTRY.get_sample_value("pulse_http_requests_total", {"status": "202"}) is None


def test_explicit_registry_is_used() -> None:
    registry = CollectorRegistry()
    m = PulseMetrics(registry)
    assert m.registry is registry
    m.count_invalid({"late": 1})
    assert registry.get_sample_value("pulse_events_invalid_total", {"reason": "late"}) == 1.0


def test_exposition_has_the_documented_series_and_no_created_series() -> None:
    m = PulseMetrics()
    m.count_events([ev("click", "email", lag_s=2)], now_ms=NOW)
    m.count_invalid({"schema": 1})
    m.duplicates.inc()
    m.count_http(202)
    text = m.exposition().decode()

    assert "_created" not in text
    for name, kind in [
        ("pulse_events_total", "counter"),
        ("pulse_events_invalid_total", "counter"),
        ("pulse_events_duplicate_total", "counter"),
        ("pulse_event_lag_seconds", "histogram"),
        ("pulse_http_requests_total", "counter"),
    ]:
        assert f"# TYPE {name} {kind}\n" in text
    assert 'pulse_events_total{channel="email",type="click"} 1.0\n' in text
    assert 'pulse_events_invalid_total{reason="schema"} 1.0\n' in text
    assert "pulse_events_duplicate_total 1.0\n" in text
    assert 'pulse_http_requests_total{status="202"} 1.0\n' in text
    assert "pulse_event_lag_seconds_count 1.0\n" in text
    assert sample(m, "pulse_events_created", {"type": "click", "channel": "email"}) is None
    assert sample(m, "pulse_event_lag_seconds_created") is None
