"""Event-time windows on the real broker: exact records, once each, late DLQ, attribution, restart.

Windows are 10 s with 5 s grace over historical event times; partitions 0 and 1
carry the traffic, 2 and 3 stay empty and close on the wall clock.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import orjson
import pytest

from tests.integration.helpers import (
    consume_all,
    final_records,
    produce,
    topic,
    window_truth,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka4]

BASE = 1_700_000_000_000 - 1_700_000_000_000 % 10_000  # a window edge, long ago
S = 1000
WINDOW_ENV = {"PULSE_WINDOW": "10s", "PULSE_GRACE": "5s", "PULSE_ATTRIBUTION_WINDOW": "1h"}


def ev(
    n: str,
    etype: str,
    t_s: float,
    user: str,
    cid: str | None = "c1",
    vid: str = "A",
    channel: str = "web",
    **extra: Any,
) -> dict[str, Any]:
    e: dict[str, Any] = {
        "event_id": n,
        "type": etype,
        "event_time": BASE + int(t_s * S),
        "user_id": user,
        "channel": channel,
    }
    if cid is not None:
        e.update(campaign_id=cid, variant_id=vid)
    if etype == "purchase":
        e.update(revenue=extra.pop("revenue", 10.0), currency="EUR")
    e.update(extra)
    return e


def truth(events: list[dict[str, Any]], attribution: dict[str, tuple[str, str, str]]) -> dict:
    return window_truth(events, 10_000, attribution)


PART0 = [  # in order; t=15 arrives after t=23 but within grace
    *(ev(f"p0-v{i}", "view", 1 + i, "u-1") for i in range(8)),
    ev("p0-c1", "click", 4, "u-1"),
    *(ev(f"p0-v2{i}", "view", 11 + i, "u-1", vid="B", channel="email") for i in range(5)),
    ev("p0-c2", "click", 12, "u-1", vid="B", channel="email"),
    ev("p0-p1", "purchase", 13, "u-1", vid="B", channel="email", revenue=25.5),
    *(ev(f"p0-v3{i}", "view", 21 + i, "u-1", cid="c2") for i in range(3)),
    ev("p0-ooo", "click", 15, "u-1", vid="B", channel="email"),
    ev("p0-last", "view", 24, "u-1", cid="c2"),
]
PART1 = [
    *(ev(f"p1-v{i}", "view", 2 + i, "u-2", cid="c2", vid="B", channel="email") for i in range(6)),
    ev("p1-c1", "click", 12, "u-2", cid="c2", vid="B", channel="email"),
    ev("p1-attr", "purchase", 16, "u-2", cid=None, revenue=30.0),  # -> c2/B/email
    ev("p1-noattr", "purchase", 17, "u-9", cid=None, revenue=99.0),  # no click: unattributed
    ev("p1-v9", "view", 18, "u-2", cid="c2", vid="B", channel="email"),
]
ATTRIBUTION = {"p1-attr": ("c2", "B", "email")}


def encode(events: list[dict[str, Any]]) -> list[tuple[bytes | None, bytes]]:
    return [(e["user_id"].encode(), orjson.dumps(e)) for e in events]


def set_campaign(env: dict[str, str], *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "stream.cli", "campaign", "set", *args],
        env=env,
        check=True,
        capture_output=True,
    )


async def test_windows_exact_once_late_and_attribution(make_worker, worker_env, kafka) -> None:
    env = dict(worker_env, **WINDOW_ENV)
    set_campaign(env, "c1", "--cost-model", "cpc", "--cost", "0.5")
    worker = make_worker(**WINDOW_ENV)
    events = topic(env, "events")
    dups = [PART0[0], PART1[0]]
    await produce(kafka.bootstrap, events, encode(PART0 + dups[:1]), partition=0)
    await produce(kafka.bootstrap, events, encode(PART1 + dups[1:]), partition=1)
    valid = len(PART0) + len(PART1)
    worker.wait_metric("pulse_events_total", valid)
    assert worker.metric("pulse_events_duplicate_total") == 2

    late = ev("p0-late", "view", 5, "u-1")  # window [0, 10) closed on partition 0 (wm = 19 s)
    await produce(kafka.bootstrap, events, encode([late]), partition=0)
    worker.wait_metric("pulse_events_late_total", 1)

    expected = truth([e for e in PART0 + PART1 if e["event_id"] != "p1-noattr"], ATTRIBUTION)
    got = await final_records(kafka.bootstrap, topic(env, "metrics"), len(expected))
    assert set(got) == set(expected)
    for key, (views, clicks, purchases, revenue, carts) in expected.items():
        r = got[key]
        assert (r["views"], r["clicks"], r["purchases"], r["revenue"], r["carts"]) == (
            views,
            clicks,
            purchases,
            revenue,
            carts,
        ), key
        assert r["window_end"] == r["window_start"] + 10_000
        assert r["ctr"] == (clicks / views if views else None)
        if key[0] == "c1":
            assert r["spend"] == clicks * 0.5
            assert r["roas"] == (revenue / r["spend"] if r["spend"] else None)
        else:
            assert r["spend"] is None and r["roas"] is None
    attributed = got[("c2", "B", "email", BASE + 10_000)]
    assert attributed["purchases"] == 1 and attributed["revenue"] == 30.0

    dlq = [orjson.loads(v) for _, v in await consume_all(kafka.bootstrap, topic(env, "events.dlq"))]
    assert [d["reason"] for d in dlq] == ["late"]
    assert orjson.loads(dlq[0]["payload"])["event_id"] == "p0-late"

    worker.wait_metric("pulse_windows_emitted_total", len(expected))
    assert (
        worker.metric("pulse_campaign_views_total", campaign_id="c1", variant_id="A", channel="web")
        == 8
    )
    assert (
        worker.metric(
            "pulse_campaign_purchases_total", campaign_id="c2", variant_id="B", channel="email"
        )
        == 1
    )
    lag = worker.metric("pulse_consumer_lag", topic=events, partition="0")
    assert lag == 0, "partition 0 fully processed and committed"
    assert worker.metric("pulse_commit_latency_seconds_count") > 0
    body = __import__("httpx").get(f"{worker.url}/v1/campaigns/c1", timeout=5).json()
    assert body["campaign_id"] == "c1" and body["settings"]["cost_model"] == "cpc"
    assert sum(w["views"] for w in body["recent"]) == 13


async def test_restart_continues_without_reset_or_double_count(
    make_worker, worker_env, kafka
) -> None:
    env = dict(worker_env, **WINDOW_ENV)
    events = topic(env, "events")
    first_half, second_half = PART0[:12], PART0[12:]
    first = make_worker(**WINDOW_ENV)
    await produce(kafka.bootstrap, events, encode(first_half), partition=0)
    first.wait_metric("pulse_events_total", len(first_half))
    assert first.stop() == 0

    second = make_worker(**WINDOW_ENV)
    await produce(kafka.bootstrap, events, encode(second_half + first_half[:3]), partition=0)
    second.wait_metric("pulse_events_duplicate_total", 3)
    expected = truth(PART0, {})
    got = await final_records(kafka.bootstrap, topic(env, "metrics"), len(expected))
    assert {
        k: [r["views"], r["clicks"], r["purchases"], r["revenue"], r["carts"]]
        for k, r in got.items()
    } == {k: list(v) for k, v in expected.items()}
