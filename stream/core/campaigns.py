"""Campaign settings and the live per-campaign view built from ``pulse.metrics`` records.

>>> view = CampaignView(keep=10, baseline_windows=5)
>>> view.apply({"campaign_id": "c", "variant_id": "A", "channel": "web", "window_start": 0,
...             "window_end": 60_000, "views": 100, "clicks": 5, "purchases": 1,
...             "revenue": 20.0, "spend": None})
>>> view.summary()["campaigns"][0]["current"]["ctr"]
0.05
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stream.core.kpis import ratio

FIELDS = ("views", "clicks", "purchases", "revenue", "spend")


def _kpis(t: dict[str, Any]) -> dict[str, Any]:
    spend = t.get("spend")
    return {
        **t,
        "ctr": ratio(t["clicks"], t["views"]),
        "cvr": ratio(t["purchases"], t["clicks"]),
        "roas": ratio(t["revenue"], spend) if spend else None,
    }


def _add(acc: dict[str, Any], rec: Mapping[str, Any]) -> None:
    for f in FIELDS:
        v = rec.get(f)
        if v is not None:
            acc[f] = (acc.get(f) or 0) + v


def _empty(ws: int, we: int) -> dict[str, Any]:
    return {
        "window_start": ws,
        "window_end": we,
        "views": 0,
        "clicks": 0,
        "purchases": 0,
        "revenue": 0.0,
        "spend": None,
    }


class CampaignSettingsStore:
    """Latest settings per campaign from the compacted ``pulse.campaigns`` topic."""

    def __init__(self) -> None:
        self.by_id: dict[str, dict[str, Any]] = {}

    def apply(self, campaign_id: str, value: Mapping[str, Any] | None) -> None:
        if value is None:
            self.by_id.pop(campaign_id, None)
        else:
            self.by_id[campaign_id] = dict(value)

    def get(self, campaign_id: str) -> dict[str, Any] | None:
        return self.by_id.get(campaign_id)


class CampaignView:
    """Recent closed windows per campaign (all variants and channels summed) and per variant."""

    def __init__(self, keep: int = 120, baseline_windows: int = 30) -> None:
        self.keep = keep
        self.baseline_windows = baseline_windows
        self.windows: dict[str, dict[int, dict[str, Any]]] = {}
        self.variants: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
        self.channels: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
        self.triggers: dict[str, list[dict[str, Any]]] = {}

    def apply(self, rec: Mapping[str, Any]) -> None:
        cid, ws, we = rec["campaign_id"], rec["window_start"], rec["window_end"]
        for bucket in (
            self.windows.setdefault(cid, {}),
            self.variants.setdefault(cid, {}).setdefault(rec.get("variant_id") or "", {}),
            self.channels.setdefault(cid, {}).setdefault(rec["channel"], {}),
        ):
            acc = bucket.get(ws)
            if acc is None:
                acc = bucket[ws] = _empty(ws, we)
            _add(acc, rec)
            if len(bucket) > self.keep:
                del bucket[min(bucket)]

    def add_trigger(self, trigger: Mapping[str, Any], keep: int = 20) -> None:
        cid = (trigger.get("target") or {}).get("campaign_id")
        if cid:
            items = self.triggers.setdefault(cid, [])
            items.append(dict(trigger))
            del items[:-keep]

    def baseline(self, cid: str) -> dict[str, Any]:
        series = [self.windows[cid][ws] for ws in sorted(self.windows.get(cid, {}))]
        past = series[-self.baseline_windows - 1 : -1]
        views = sum(w["views"] for w in past)
        clicks = sum(w["clicks"] for w in past)
        purchases = sum(w["purchases"] for w in past)
        return {
            "windows": len(past),
            "views": views,
            "clicks": clicks,
            "purchases": purchases,
            "ctr": ratio(clicks, views),
            "cvr": ratio(purchases, clicks),
        }

    def campaign(self, cid: str, recent: int = 60, detail: bool = False) -> dict[str, Any] | None:
        if cid not in self.windows:
            return None
        series = [_kpis(self.windows[cid][ws]) for ws in sorted(self.windows[cid])]
        out: dict[str, Any] = {
            "campaign_id": cid,
            "current": series[-1],
            "recent": series[-recent:],
            "baseline": self.baseline(cid),
            "variants": {
                v: _kpis(w[max(w)]) for v, w in sorted(self.variants.get(cid, {}).items())
            },
            "triggers": self.triggers.get(cid, [])[-10:],
        }
        if detail:
            out["channels"] = {
                ch: _kpis(w[max(w)]) for ch, w in sorted(self.channels.get(cid, {}).items())
            }
        return out

    def summary(self, recent: int = 60) -> dict[str, Any]:
        return {
            "campaigns": [
                c for cid in sorted(self.windows) if (c := self.campaign(cid, recent)) is not None
            ]
        }
