"""A bad rules override on pulse.campaigns: rejected, counted, previous settings kept, work goes on.

The override is written straight to the topic (as any producer could, bypassing
``pulse campaign set``'s checks). 10 s windows with 5 s grace, traffic on partition 0:
first at historical event times (the watermark closes the window), then, once the
partition may have gone idle and closed on the wall clock, at the current time.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson
import pytest

from tests.integration.helpers import final_records, produce, topic

pytestmark = pytest.mark.integration

BASE = 1_700_000_000_000 - 1_700_000_000_000 % 10_000  # a window edge, long ago
WINDOW_ENV = {"PULSE_WINDOW": "10s", "PULSE_GRACE": "5s"}
GOOD = {"campaign_id": "c1", "cost_model": "cpc", "cost": 0.5, "rules": {"ctr_drop": {"z": 4}}}
BAD = {"campaign_id": "c1", "rules": {"ctr_drop": {"z": "4"}}}
REJECTED = "pulse_campaign_settings_rejected_total"


def events(tag: str, at_ms: int, closer_ms: int | None = None) -> list[tuple[bytes | None, bytes]]:
    """Five views and a click of c1 at ``at_ms``, then a view at ``closer_ms`` if given."""
    view = {"type": "view", "event_time": at_ms, "user_id": "u-1", "campaign_id": "c1",
            "variant_id": "A", "channel": "web"}  # fmt: skip
    out = [{**view, "event_id": f"{tag}-v{i}"} for i in range(5)]
    out.append({**view, "event_id": f"{tag}-c", "type": "click"})
    if closer_ms is not None:
        out.append({**view, "event_id": f"{tag}-close", "event_time": closer_ms})
    return [(b"u-1", orjson.dumps(e)) for e in out]


def campaign(url: str, expect: dict[str, Any], timeout_s: float = 60) -> dict[str, Any]:
    """``GET /v1/campaigns/c1`` once it has a closed window and ``expect`` as its settings."""
    deadline = time.monotonic() + timeout_s
    body: Any = None
    while time.monotonic() < deadline:
        r = httpx.get(f"{url}/v1/campaigns/c1", timeout=5)
        body = r.json()
        if r.status_code == 200 and body.get("settings") == expect:
            return body
        time.sleep(0.3)
    raise AssertionError(f"c1 never had settings {expect}: {body}")


async def test_a_bad_override_is_rejected_and_the_previous_settings_kept(
    make_worker, worker_env, kafka
) -> None:
    env = dict(worker_env, **WINDOW_ENV)
    worker = make_worker(**WINDOW_ENV)
    settings_topic = topic(env, "campaigns")
    await produce(kafka.bootstrap, settings_topic, [(b"c1", orjson.dumps(GOOD))])
    await produce(
        kafka.bootstrap, topic(env, "events"), events("a", BASE, BASE + 25_000), partition=0
    )
    campaign(worker.url, GOOD)  # window [0, 10) closed, good settings applied
    assert worker.metric_sum(REJECTED) == 0

    await produce(kafka.bootstrap, settings_topic, [(b"c1", orjson.dumps(BAD))])
    worker.wait_metric(REJECTED, 1, reason="rules")
    assert worker.metric_sum(REJECTED) == 1
    assert campaign(worker.url, GOOD)["settings"] == GOOD  # the previous settings are kept
    log = worker.tail(20_000)
    assert "campaign 'c1' keeps its previous settings" in log and "field 'z'" in log, log

    # the worker goes on (historical times would now be late: partition 0 has likely gone
    # idle and closed on the wall clock): the closer's window and a live one close, the
    # live one priced with the kept cost model
    now = int(time.time() * 1000)
    await produce(kafka.bootstrap, topic(env, "events"), events("b", now), partition=0)
    worker.wait_metric("pulse_events_total", 13)
    got = await final_records(kafka.bootstrap, topic(env, "metrics"), 3, timeout_s=90)
    by_window = {ws: r for (_, _, _, ws), r in got.items()}
    live = now - now % 10_000
    assert sorted(by_window) == [BASE, BASE + 20_000, live]
    assert (by_window[BASE]["views"], by_window[BASE]["clicks"]) == (5, 1)
    assert (by_window[live]["views"], by_window[live]["clicks"]) == (5, 1)
    assert by_window[live]["spend"] == 0.5  # cpc 0.5 × 1 click: GOOD is still in force
    assert worker.metric("pulse_events_late_total") == 0
    assert httpx.get(f"{worker.url}/readyz", timeout=5).status_code == 200
    assert worker.metric_sum(REJECTED) == 1
