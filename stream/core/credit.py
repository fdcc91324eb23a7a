"""Credit per campaign and per channel over ``pulse.metrics`` records, model by model.

The rule-based models' credit is summed from the records' ``attributed``; the
data-driven model is the Markov removal effect over the journey steps the
records carry (``journeys``; :func:`stream.core.attribution.with_nulls` ends the
journeys that never converted), its share of the converted journeys and their
revenue. The same view answers ``GET /v1/attribution`` (a worker follows
``pulse.metrics``) and feeds the report's attribution tables.

>>> view = AttributionView()
>>> view.apply({"campaign_id": "a", "channel": "email", "window_start": 0, "window_end": 60,
...             "attributed": {"last_click": {"purchases": 0, "revenue": 0}},
...             "journeys": {"from_campaign": {"(start)": 2}, "from_channel": {"(start)": 2},
...                          "conversions": 0, "value": 0}})
>>> view.apply({"campaign_id": "b", "channel": "search", "window_start": 0, "window_end": 60,
...             "attributed": {"last_click": {"purchases": 1, "revenue": 30.0}},
...             "journeys": {"from_campaign": {"a": 1}, "from_channel": {"email": 1},
...                          "conversions": 1, "value": 30.0}})
>>> out = view.summary()
>>> out["campaigns"]["a"]["last_click"], out["campaigns"]["a"]["markov"]
({'purchases': 0.0, 'revenue': 0.0}, {'purchases': 0.5, 'revenue': 15.0, 'share': 0.5})
>>> out["journeys"]
{'clicks': 3, 'conversions': 1, 'value': 30.0}
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from stream.core.attribution import CONVERSION, MODELS, transition_shares, with_nulls

#: every model a summary lists: the rule-based ones, then the data-driven one
ALL_MODELS = (*MODELS, "markov")
DIMENSIONS = ("campaign", "channel")


class AttributionView:
    """Credit per campaign and channel summed over records as they arrive.

    Its size grows with the number of campaigns and channels (and the steps
    between them), not with the records.
    """

    def __init__(self, currency: str | None = None) -> None:
        self.currency = currency
        self.credit: dict[str, dict[str, dict[str, list[float]]]] = {d: {} for d in DIMENSIONS}
        self.steps: dict[str, dict[tuple[str, str], float]] = {
            d: defaultdict(float) for d in DIMENSIONS
        }
        self.value: dict[str, dict[str, float]] = {d: defaultdict(float) for d in DIMENSIONS}
        self.span: tuple[int, int] | None = None

    def apply(self, rec: Mapping[str, Any]) -> None:
        """Add one ``pulse.metrics`` record (records without credit fields add nothing)."""
        names = {"campaign": rec.get("campaign_id"), "channel": rec.get("channel")}
        if names["campaign"] is None:
            return
        ws, we = rec.get("window_start"), rec.get("window_end")
        if isinstance(ws, int) and isinstance(we, int):
            low, high = self.span or (ws, we)
            self.span = (min(ws, low), max(we, high))
        if self.currency is None and rec.get("currency"):
            self.currency = str(rec["currency"])
        attributed = rec.get("attributed")
        journeys = rec.get("journeys")
        for dim, name in names.items():
            name = str(name)
            if isinstance(attributed, Mapping):
                per = self.credit[dim].setdefault(name, {})
                for model, c in attributed.items():
                    if model in MODELS and isinstance(c, Mapping):
                        acc = per.setdefault(model, [0.0, 0.0])
                        acc[0] += float(c.get("purchases") or 0.0)
                        acc[1] += float(c.get("revenue") or 0.0)
            if isinstance(journeys, Mapping):
                steps = self.steps[dim]
                for prev, n in (journeys.get(f"from_{dim}") or {}).items():
                    steps[(str(prev), name)] += float(n)
                conversions = float(journeys.get("conversions") or 0.0)
                if conversions:
                    steps[(name, CONVERSION)] += conversions
                    self.value[dim][name] += float(journeys.get("value") or 0.0)

    def summary(self) -> dict[str, Any]:
        """Per campaign and per channel: each model's purchases and revenue (Markov's
        with its share), and the journeys they were computed from."""
        out: dict[str, Any] = {
            "window_start": self.span[0] if self.span else None,
            "window_end": self.span[1] if self.span else None,
            "currency": self.currency,
            "models": list(ALL_MODELS),
        }
        for dim in DIMENSIONS:
            steps = self.steps[dim]
            shares = transition_shares(with_nulls(steps))
            conversions = sum(n for (_, dst), n in steps.items() if dst == CONVERSION)
            value = sum(self.value[dim].values())
            table: dict[str, dict[str, Any]] = {}
            for name in sorted(set(self.credit[dim]) | set(shares)):
                credit = self.credit[dim].get(name, {})
                row: dict[str, Any] = {
                    m: {"purchases": round(c[0], 6), "revenue": round(c[1], 6)}
                    for m in MODELS
                    for c in [credit.get(m, [0.0, 0.0])]
                }
                share = shares.get(name, 0.0)
                row["markov"] = {
                    "purchases": round(share * conversions, 6),
                    "revenue": round(share * value, 6),
                    "share": round(share, 6),
                }
                table[name] = row
            out[f"{dim}s"] = table
            if dim == "campaign":
                out["journeys"] = {
                    "clicks": int(sum(n for (_, dst), n in steps.items() if dst != CONVERSION)),
                    "conversions": int(conversions),
                    "value": round(value, 6),
                }
        return out


def attribution_summary(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """:meth:`AttributionView.summary` over ``records``."""
    view = AttributionView()
    for rec in records:
        if isinstance(rec, Mapping):
            view.apply(rec)
    return view.summary()
