"""Currencies on the real broker: purchases converted exactly with the rate in force at their
event time (rates set with ``pulse fx set`` before and while the worker runs); a currency
without a rate stays out of revenue, is counted and named in a ``campaign.alert``."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import orjson
import pytest

from tests.integration.helpers import consume_all, final_records, produce, topic

pytestmark = [pytest.mark.integration]

BASE = 1_700_000_000_000 - 1_700_000_000_000 % 10_000  # a window edge, long ago
S = 1000
ENV = {"PULSE_WINDOW": "10s", "PULSE_GRACE": "5s", "PULSE_CURRENCY": "USD"}


def buy(n: str, t_s: float, amount: float, currency: str) -> dict[str, Any]:
    return {
        "event_id": n,
        "type": "purchase",
        "event_time": BASE + int(t_s * S),
        "user_id": "u-1",
        "campaign_id": "c1",
        "channel": "web",
        "order_id": f"o-{n}",
        "revenue": amount,
        "currency": currency,
    }


def view(n: str, t_s: float) -> dict[str, Any]:
    return {"event_id": n, "type": "view", "event_time": BASE + int(t_s * S),
            "user_id": "u-1", "campaign_id": "c1", "channel": "web"}  # fmt: skip


def fx_set(env: dict[str, str], currency: str, rate: str, at_s: float) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "stream.cli", "fx", "set", currency, rate,
         "--at", str(BASE + int(at_s * S))],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return done.stdout


async def test_purchases_convert_at_event_time_and_a_missing_rate_alerts(
    make_worker, worker_env, kafka
) -> None:
    env = dict(worker_env, **ENV)
    assert "1 EUR = 1.1 USD from" in fx_set(env, "EUR", "1.10", 0)
    fx_set(env, "EUR", "1.20", 30)  # EUR rises from t = 30 s on
    fx_set(env, "GBP", "1.25", 0)
    worker = make_worker(**ENV)
    events = topic(env, "events")
    first = [
        buy("b1", 1, 10.0, "EUR"),  # 11.00 USD
        buy("b2", 2, 5.0, "USD"),  # 5.00
        buy("b3", 3, 8.0, "GBP"),  # 10.00
        buy("b4", 4, 1000.0, "JPY"),  # no rate: unconverted
        buy("b5", 31, 10.0, "EUR"),  # 12.00 at the new rate
        buy("b6", 35, 20.0, "eur"),  # 24.00
        view("v1", 45),
    ]
    await produce(kafka.bootstrap, events, [(b"u-1", orjson.dumps(e)) for e in first], partition=0)
    worker.wait_metric("pulse_events_total", len(first))
    fx_set(env, "CHF", "1.13", 0)  # set while the worker runs: later purchases convert
    worker.wait_metric("pulse_revenue_unconverted_total", 1, currency="JPY")
    later = [buy("b7", 52, 100.0, "CHF"), view("v2", 75)]
    await produce(kafka.bootstrap, events, [(b"u-1", orjson.dumps(e)) for e in later], partition=0)

    got = await final_records(kafka.bootstrap, topic(env, "metrics"), 4)
    by_window = {key[3] - BASE: r for key, r in got.items()}
    w0, w30, w50 = by_window[0], by_window[30_000], by_window[50_000]
    assert (w0["purchases"], w0["revenue"], w0["currency"]) == (4, 26.0, "USD")
    assert w0["revenue_by_currency"] == {"EUR": 10.0, "GBP": 8.0, "JPY": 1000.0, "USD": 5.0}
    assert w0["unconverted"] == {"JPY": 1}
    assert (w30["revenue"], w30["revenue_by_currency"], w30["unconverted"]) == (
        36.0, {"EUR": 30.0}, {},
    )  # fmt: skip
    assert (w50["revenue"], w50["revenue_by_currency"]) == (113.0, {"CHF": 100.0})
    assert worker.metric(
        "pulse_campaign_revenue_total", campaign_id="c1", variant_id="", channel="web"
    ) == pytest.approx(26.0 + 36.0 + 113.0)

    triggers = [
        orjson.loads(v) for _, v in await consume_all(kafka.bootstrap, topic(env, "triggers"))
    ]
    alerts = [t for t in triggers if t["rule"] == "fx_missing"]
    assert len(alerts) == 1, alerts
    alert = alerts[0]
    assert (alert["action"], alert["target"]) == ("campaign.alert", {"campaign_id": "c1"})
    assert alert["evidence"]["unconverted"] == {"JPY": 1}
    assert "pulse fx set JPY" in alert["reason"] and "JPY 1000.00" in alert["reason"]
    print(
        f"\nfx: windows {sorted(by_window)} revenue USD "
        f"{[by_window[w]['revenue'] for w in sorted(by_window)]}; alert: {alert['reason']}"
    )
