"""Campaign KPI formulas and the ``pulse.metrics`` record.

CTR = clicks / views; CVR = attributed purchases / clicks; spend from the
campaign's cost model (``cpc``: per click, ``cpm``: per thousand views);
ROAS = revenue / spend. A rate with a zero denominator is ``None``.

>>> cpc = {"cost_model": "cpc", "cost": 0.5}
>>> metric_record("c", "A", "web", 0, 60_000, [1000, 30, 3, 90.0], cpc)["roas"]
6.0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from stream.core.attribution import MODELS


def ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def spend(views: int, clicks: int, campaign: Mapping[str, Any] | None) -> float | None:
    """Spend under the campaign's cost model, or None without one.

    >>> spend(2000, 10, {"cost_model": "cpm", "cost": 4.0}), spend(1, 1, None)
    (8.0, None)
    """
    if not campaign:
        return None
    model, cost = campaign.get("cost_model"), campaign.get("cost")
    if not isinstance(cost, int | float):
        return None
    if model == "cpc":
        return round(clicks * cost, 6)
    if model == "cpm":
        return round(views / 1000 * cost, 6)
    return None


def metric_record(
    campaign_id: str,
    variant_id: str,
    channel: str,
    window_start: int,
    window_end: int,
    row: Sequence[Any],
    campaign: Mapping[str, Any] | None = None,
    currency: str = "USD",
) -> dict[str, Any]:
    """One closed-window record for campaign × variant × channel.

    ``revenue``, ``spend`` and ``roas`` are in the reporting ``currency``;
    ``revenue_by_currency`` keeps the amounts as sent, and ``unconverted`` counts
    the purchases per currency that had no rate (not in ``revenue``). ``attributed``
    has each attribution model's purchases and revenue credited to this row;
    ``journeys`` the steps of the users' click journeys into it (:func:`journeys`).
    """
    views, clicks, purchases, revenue = row[0], row[1], row[2], round(float(row[3]), 6)
    carts = row[4] if len(row) > 4 else 0
    unconverted = dict(row[5]) if len(row) > 5 else {}
    credited = row[7] if len(row) > 7 else {}
    attributed = {
        m: {"purchases": round(c[0], 6), "revenue": round(c[1], 6)}
        for m in MODELS
        for c in [credited.get(m, (0.0, 0.0))]
    }
    by_currency = {c: round(v, 6) for c, v in sorted(row[6].items())} if len(row) > 6 else {}
    steps = row[8] if len(row) > 8 else {}
    cost = spend(views, clicks, campaign)
    return {
        "campaign_id": campaign_id,
        "variant_id": variant_id or None,
        "channel": channel,
        "window_start": window_start,
        "window_end": window_end,
        "views": views,
        "clicks": clicks,
        "carts": carts,
        "purchases": purchases,
        "revenue": revenue,
        "spend": cost,
        "currency": currency,
        "revenue_by_currency": by_currency,
        "unconverted": unconverted,
        "attributed": attributed,
        "journeys": journeys(steps),
        "ctr": ratio(clicks, views),
        "cvr": ratio(purchases, clicks),
        "roas": ratio(revenue, cost) if cost is not None else None,
    }


def journeys(steps: Mapping[str, float]) -> dict[str, Any]:
    """A row's journey steps as its record shows them: clicks here by where the journey
    was before (``(start)``: its first click), by campaign and by channel; purchases
    that ended a journey whose last click was here, and their revenue.

    >>> j = journeys({"campaign:(start)": 2, "channel:email": 2, "conversion": 1, "value": 9.5})
    >>> j["from_campaign"], j["from_channel"], j["conversions"], j["value"]
    ({'(start)': 2}, {'email': 2}, 1, 9.5)
    """
    out: dict[str, Any] = {"from_campaign": {}, "from_channel": {}}
    for step, n in sorted(steps.items()):
        kind, _, prev = step.partition(":")
        if prev:
            out[f"from_{kind}"][prev] = n
    out["conversions"] = steps.get("conversion", 0)
    out["value"] = round(float(steps.get("value", 0.0)), 6)
    return out
