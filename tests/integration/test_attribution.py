"""Attribution models on the real broker: each purchase's credit over the user's clicks.

Hand-made paths: u1 clicks c1, c2 and c3 ten seconds apart, then buys without a
campaign; u2 clicks c2 once and buys. The window of the purchases carries, per
row, what every model credits it with (``attributed``), a credit-only row for c1.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from tests.integration.helpers import final_records, produce, topic

pytestmark = [pytest.mark.integration]

BASE = 1_700_000_000_000 - 1_700_000_000_000 % 10_000  # a window edge, long ago
S = 1000
ENV = {
    "PULSE_WINDOW": "10s",
    "PULSE_GRACE": "5s",
    "PULSE_ATTRIBUTION_WINDOW": "1h",
    "PULSE_ATTRIBUTION_HALF_LIFE": "30s",
}


def ev(n: str, etype: str, t_s: float, user: str, cid: str | None = None, **extra: Any) -> dict:
    e = {"event_id": n, "type": etype, "event_time": BASE + int(t_s * S), "user_id": user,
         "channel": "web", **extra}  # fmt: skip
    if cid:
        e["campaign_id"] = cid
    return e


EVENTS = [
    ev("a1", "click", 1, "u1", "c1"),
    ev("b1", "click", 3, "u2", "c2"),
    ev("a2", "click", 11, "u1", "c2"),
    ev("a3", "click", 21, "u1", "c3"),
    ev("a4", "purchase", 31, "u1", revenue=100.0, currency="EUR", order_id="o1"),
    ev("b2", "purchase", 33, "u2", revenue=40.0, currency="EUR", order_id="o2"),
    ev("z", "view", 55, "u1", "c1"),
]


async def test_each_model_credits_the_hand_made_paths(make_worker, worker_env, kafka) -> None:
    worker = make_worker(**ENV)  # PULSE_CURRENCY=EUR (the tests' default): revenue as sent
    env = dict(worker_env, **ENV)
    records = [(e["user_id"].encode(), orjson.dumps(e)) for e in EVENTS]
    await produce(kafka.bootstrap, topic(env, "events"), records, partition=0)
    worker.wait_metric("pulse_events_total", len(EVENTS))
    got = await final_records(kafka.bootstrap, topic(env, "metrics"), 5, credit_only=True)
    purchases = {k[0]: r for k, r in got.items() if k[3] == BASE + 30_000}
    assert set(purchases) == {"c1", "c2", "c3"}
    assert (purchases["c3"]["purchases"], purchases["c2"]["purchases"]) == (1, 1)
    assert purchases["c1"]["purchases"] == 0  # a row only for its credit

    def credit(model: str) -> dict[str, tuple[float, float]]:
        return {
            c: (r["attributed"][model]["purchases"], r["attributed"][model]["revenue"])
            for c, r in purchases.items()
        }

    assert credit("last_click") == {"c1": (0, 0), "c2": (1, 40), "c3": (1, 100)}
    assert credit("first_click") == {"c1": (1, 100), "c2": (1, 40), "c3": (0, 0)}

    def close(model: str, want: dict[str, tuple[float, float]]) -> None:
        got = credit(model)
        assert set(got) == set(want), model
        for c, pair in want.items():  # records round to 6 decimals
            assert got[c] == pytest.approx(pair, abs=2e-6), (model, c)

    third = 1 / 3
    close("linear", {"c1": (third, 100 * third), "c2": (1 + third, 40 + 100 * third),
                     "c3": (third, 100 * third)})  # fmt: skip
    close("position", {"c1": (0.4, 40), "c2": (1.2, 60), "c3": (0.4, 40)})
    # u1's touches are 30, 20 and 10 s old at a 30 s half-life
    w = [0.5 ** (30 / 30), 0.5 ** (20 / 30), 0.5 ** (10 / 30)]
    share = [x / sum(w) for x in w]
    close(
        "time_decay",
        {
            "c1": (share[0], 100 * share[0]),
            "c2": (share[1] + 1, 100 * share[1] + 40),
            "c3": (share[2], 100 * share[2]),
        },
    )
    print(
        "\nattribution on the broker: "
        + "; ".join(f"{m}: {credit(m)}" for m in ("last_click", "linear", "time_decay"))
    )


def outside_events(
    every: int = 10,
) -> tuple[list[tuple[bytes, bytes]], list[tuple[list[str], int, int]]]:
    """Every ``every``-th path of ChannelAttribution's 10,000 journeys (the ``mta``
    package's copy) as events: each journey one visitor whose clicks, 1 ms apart, go to
    the campaigns named by the path's channels, then a purchase when it converted."""
    import importlib.resources

    import pandas as pd

    df = pd.read_csv(importlib.resources.files("mta") / "data" / "data.csv.gz")
    journeys, records = [], []
    t = 0
    columns = ["path", "total_conversions", "total_conversion_value", "total_null"]
    for i, (path, conv, value, null) in enumerate(df[columns][::every].itertuples(index=False)):
        steps = [c.strip() for c in path.split(">")]
        journeys.append((steps, int(conv), int(null)))
        for k in range(int(conv) + int(null)):
            user = f"j{i}-{k}"
            for n, cid in enumerate(steps):
                t += 1
                e = {"event_id": f"{user}-{n}", "type": "click", "event_time": BASE + t,
                     "anonymous_id": user, "campaign_id": cid, "channel": "web"}  # fmt: skip
                records.append((user.encode(), orjson.dumps(e)))
            if k < conv:
                t += 1
                e = {"event_id": f"{user}-buy", "type": "purchase", "event_time": BASE + t,
                     "anonymous_id": user, "order_id": user, "currency": "EUR",
                     "revenue": round(value / conv, 2)}  # fmt: skip
                records.append((user.encode(), orjson.dumps(e)))
    return records, journeys


async def test_outside_journeys_streamed_credit_as_the_batch_computation(
    make_worker, worker_env, kafka
) -> None:
    """Point 3's live half: the journeys of 1,000 of the outside paths (about 40,000
    events) through a worker give GET /v1/attribution the batch computation's Markov
    shares and rule-based credit (over the last 16 clicks a worker keeps)."""
    import httpx

    from stream.core.attribution import heuristic_credit, removal_shares
    from stream.core.windows import MAX_TOUCHES

    records, journeys = outside_events()
    worker = make_worker(**ENV)
    env = dict(worker_env, **ENV)
    await produce(kafka.bootstrap, topic(env, "events"), records)
    worker.wait_metric("pulse_events_total", len(records), timeout_s=300)
    conversions = sum(c for _, c, _ in journeys)
    clicks = sum(len(p) * (c + n) for p, c, n in journeys)
    body: dict[str, Any] = {}
    for _ in range(240):  # until the last windows closed (idle partitions: wall clock)
        body = httpx.get(f"{worker.url}/v1/attribution", timeout=10).json()
        if body["journeys"] == {**body["journeys"], "clicks": clicks, "conversions": conversions}:
            break
        await asyncio.sleep(0.5)
    assert body["journeys"]["clicks"] == clicks and body["journeys"]["conversions"] == conversions
    live = body["campaigns"]
    batch = removal_shares(journeys)
    assert set(live) == set(batch)
    markov_diff = max(abs(live[c]["markov"]["share"] - batch[c]) for c in batch)
    assert markov_diff <= 2e-6, markov_diff
    diffs = {"markov": markov_diff}
    kept = [(p[-MAX_TOUCHES:], c) for p, c, _ in journeys]
    for model in ("last_click", "first_click", "linear", "position"):
        want = heuristic_credit(kept, model)
        diffs[model] = max(abs(live[c][model]["purchases"] - want.get(c, 0.0)) for c in live)
        assert diffs[model] <= 1e-3, (model, diffs[model])
    print(
        f"\n{len(records):,} events of the outside journeys through a worker: max difference "
        "from the batch computation "
        + ", ".join(f"{m} {d:.2g}" for m, d in diffs.items())
        + " (Markov as a share, the others in credited purchases)"
    )
