"""Campaign triggers on a real broker: a CTR collapse fires once, a steady campaign stays quiet."""

from __future__ import annotations

import random

import orjson
import pytest

from stream.config import Settings
from stream.core.triggers import trigger_id
from stream.tools.backtest import run_backtest
from tests.integration.helpers import consume_all, produce, topic

pytestmark = pytest.mark.integration

BASE = 1_700_000_000_000 - 1_700_000_000_000 % 10_000
WINDOWS = 12
DROP_FROM = 8


def stream_events() -> list[tuple[bytes, bytes]]:
    rng = random.Random(7)
    out = []
    n = 0
    for w in range(WINDOWS):
        for cid in ("c-steady", "c-drop"):
            clicks = 5 if cid == "c-drop" and w >= DROP_FROM else 30
            for i in range(1000):
                n += 1
                t = BASE + w * 10_000 + rng.randrange(10_000)
                user = f"u{rng.randrange(500)}"
                e = {
                    "event_id": f"e{n}",
                    "type": "view",
                    "event_time": t,
                    "user_id": user,
                    "campaign_id": cid,
                    "variant_id": "A",
                }
                out.append((e, t))
                if i < clicks:
                    n += 1
                    out.append(({**e, "event_id": f"e{n}", "type": "click"}, t))
    out.sort(key=lambda pair: pair[1])
    return [(e["user_id"].encode(), orjson.dumps(e)) for e, _ in out]


async def test_ctr_collapse_fires_once_and_steady_is_quiet(
    make_worker, worker_env, kafka, tmp_path
):
    env = {"PULSE_WINDOW": "10s", "PULSE_GRACE": "2s"}
    worker = make_worker(**env)
    events = stream_events()
    await produce(kafka.bootstrap, topic(worker_env, "events"), events)
    worker.wait_metric("pulse_events_total", len(events), timeout_s=90)
    worker.wait_metric("pulse_windows_emitted_total", 2 * WINDOWS, timeout_s=90)

    raw = await consume_all(kafka.bootstrap, topic(worker_env, "triggers"))
    triggers = [orjson.loads(v) for _, v in raw]
    assert [t["target"]["campaign_id"] for t in triggers] == ["c-drop"], triggers
    t = triggers[0]
    assert t["action"] == "campaign.pause" and t["rule"] == "ctr_drop"
    ws = BASE + DROP_FROM * 10_000
    assert t["trigger_id"] == trigger_id("ctr_drop", {"campaign_id": "c-drop"}, ws)
    ev = t["evidence"]
    assert (ev["window_start"], ev["trials"], ev["successes"]) == (ws, 1000, 5)
    assert ev["baseline_rate"] == pytest.approx(0.03) and ev["z"] < -3
    assert "c-drop" in t["reason"] and "0.50%" in t["reason"] and "3.00%" in t["reason"]
    assert worker.metric("pulse_triggers_total", action="campaign.pause", rule="ctr_drop") == 1
    # the three later low windows are held back by hysteresis, not re-fired
    assert (
        worker.metric("pulse_triggers_suppressed_total", rule="ctr_drop", reason="hysteresis")
        == WINDOWS - DROP_FROM - 1
    )
    assert worker.metric("pulse_model_drift_total", model="ctr") >= 1  # Page-Hinkley on CTR
    body = __import__("httpx").get(f"{worker.url}/v1/campaigns/c-drop", timeout=5).json()
    assert [x["trigger_id"] for x in body["triggers"]] == [t["trigger_id"]]

    # the same events offline: same windows, same campaign triggers (same ids)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(v for _, v in events))
    summary = run_backtest(
        Settings.from_env(dict(worker_env, **env)), path, tmp_path / "bt", progress=False
    )
    offline = [orjson.loads(x) for x in (tmp_path / "bt/triggers.jsonl").read_bytes().splitlines()]
    assert [(o["trigger_id"], o["action"]) for o in offline] == [(t["trigger_id"], t["action"])]
    live_windows = await consume_all(kafka.bootstrap, topic(worker_env, "metrics"))
    offline_windows = (tmp_path / "bt/metrics.jsonl").read_bytes().splitlines()
    assert summary["windows"] == len(offline_windows) == len(live_windows)
    key = lambda r: (r["campaign_id"], r["channel"], r["window_start"])  # noqa: E731
    assert sorted(map(key, map(orjson.loads, offline_windows))) == sorted(
        key(orjson.loads(v)) for _, v in live_windows
    )
