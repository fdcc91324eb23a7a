"""Campaign settings and the live per-campaign view built from ``pulse.metrics`` records.

Settings (``pulse.campaigns`` values) are checked before they are kept
(:func:`check_settings`): a bad value is rejected and the campaign keeps its
previous settings, so the merge never sees it.

>>> store = CampaignSettingsStore()
>>> store.apply("c1", {"campaign_id": "c1", "cost_model": "cpc", "cost": 0.5}) is None
True
>>> store.apply("c1", {"campaign_id": "c1", "budget": "lots"}).reason
'budget'
>>> store.get("c1")["cost"]
0.5
>>> view = CampaignView(keep=10, baseline_windows=5)
>>> view.apply({"campaign_id": "c", "variant_id": "A", "channel": "web", "window_start": 0,
...             "window_end": 60_000, "views": 100, "clicks": 5, "purchases": 1,
...             "revenue": 20.0, "spend": None})
>>> view.summary()["campaigns"][0]["current"]["ctr"]
0.05
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stream.core.errors import ConfigError
from stream.core.kpis import ratio
from stream.core.rules import Rules, RulesError, parse_override

FIELDS = ("views", "clicks", "purchases", "revenue", "spend")
#: why a settings value is rejected: the setting at fault, ``value`` (not an object)
#: or ``json`` (not JSON at all): bounded, a metric label
SETTINGS_REASONS = (
    "json",
    "value",
    "campaign_id",
    "cost_model",
    "cost",
    "budget",
    "variants",
    "rules",
)


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


class SettingsError(ConfigError):
    """A campaign's settings value is wrong; ``setting`` names the key at fault."""

    def __init__(self, campaign_id: str, setting: str, problem: str) -> None:
        self.campaign_id, self.setting = campaign_id, setting
        super().__init__(f"campaign {campaign_id!r} settings, {setting!r}: {problem}")


def _amount(campaign_id: str, value: Mapping[str, Any], key: str, what: str) -> None:
    x = value.get(key)
    if x is not None and (isinstance(x, bool) or not isinstance(x, int | float) or x < 0):
        raise SettingsError(campaign_id, key, f"must be a number >= 0 ({what}), not {x!r}")


def check_settings(campaign_id: str, value: Any, rules: Rules | None = None) -> dict[str, Any]:
    """``value`` as a settings dict, or :class:`SettingsError` / :class:`RulesError`.

    Checks what Pulse reads: ``campaign_id`` (the record's key), ``cost_model``
    (``cpc`` or ``cpm``) with a numeric ``cost``, ``budget``, ``variants`` (a list of
    ids) and the ``rules`` override (against ``rules``, the file's, when given).
    Other keys are kept as they are; ``null`` means unset.

    >>> check_settings("c1", {"cost_model": "cpm"})
    Traceback (most recent call last):
    ...
    stream.core.campaigns.SettingsError: campaign 'c1' settings, 'cost': cost_model cpm needs \
a numeric cost (price per 1000 views)
    """
    if not isinstance(value, Mapping):
        raise SettingsError(campaign_id, "value", f"must be a JSON object, not {value!r:.80}")
    cid = value.get("campaign_id")
    if cid is not None and cid != campaign_id:
        raise SettingsError(campaign_id, "campaign_id", f"{cid!r} differs from the record's key")
    model, cost = value.get("cost_model"), value.get("cost")
    if model not in (None, "cpc", "cpm"):
        raise SettingsError(campaign_id, "cost_model", f"{model!r} is not one of cpc, cpm")
    _amount(campaign_id, value, "cost", "price per click (cpc) or per 1000 views (cpm)")
    if model is not None and cost is None:
        per = "click" if model == "cpc" else "1000 views"
        problem = f"cost_model {model} needs a numeric cost (price per {per})"
        raise SettingsError(campaign_id, "cost", problem)
    if cost is not None and model is None:
        raise SettingsError(campaign_id, "cost_model", "cost needs a cost_model (cpc or cpm)")
    _amount(campaign_id, value, "budget", "in the reporting currency")
    variants = value.get("variants")
    if variants is not None and (
        not isinstance(variants, list) or not all(isinstance(v, str) and v for v in variants)
    ):
        raise SettingsError(campaign_id, "variants", f"must be a list of ids, not {variants!r}")
    parse_override(rules, value.get("rules"), campaign_id)
    return dict(value)


@dataclass(frozen=True)
class Rejected:
    """Why a settings value was not kept: ``reason`` is the setting at fault (bounded)."""

    reason: str
    message: str

    def __str__(self) -> str:
        return self.message


class CampaignSettingsStore:
    """Latest valid settings per campaign from the compacted ``pulse.campaigns`` topic."""

    def __init__(self) -> None:
        self.by_id: dict[str, dict[str, Any]] = {}

    def apply(self, campaign_id: str, value: Any, rules: Rules | None = None) -> Rejected | None:
        """Keep ``value`` (None: a tombstone, delete), or return why not and keep the old one.

        ``rules`` (the worker's) lets a ``rules`` override be checked against them.
        """
        if value is None:
            self.by_id.pop(campaign_id, None)
            return None
        try:
            self.by_id[campaign_id] = check_settings(campaign_id, value, rules)
        except RulesError as exc:
            return Rejected("rules", str(exc))
        except SettingsError as exc:
            return Rejected(exc.setting, str(exc))
        return None

    def get(self, campaign_id: str) -> dict[str, Any] | None:
        return self.by_id.get(campaign_id)


class CampaignView:
    """Recent closed windows per campaign (all variants and channels summed) and per variant.

    Each series keeps the windows of its last ``keep`` window lengths of event
    time (2 h of 60 s windows), counted from its newest window: a sparse variant
    or channel covers the same span as its campaign, and the view stops growing
    once that span has passed.

    >>> view = CampaignView(keep=2)
    >>> for ws in (0, 10, 20, 30):
    ...     view.apply({"campaign_id": "c", "channel": "web", "window_start": ws,
    ...                 "window_end": ws + 10, "views": 1})
    >>> sorted(view.windows["c"])
    [20, 30]
    """

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
            if acc is None:  # a new window: the only time the span can move
                acc = bucket[ws] = _empty(ws, we)
                horizon = max(bucket) - self.keep * (we - ws)
                if min(bucket) <= horizon:
                    for old in [w for w in bucket if w <= horizon]:
                        del bucket[old]
            _add(acc, rec)

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
