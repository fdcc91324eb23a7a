"""Campaign trigger rules with safety rails, evaluated on closed windows.

Pure: feed each campaign's closed-window totals in window order; get trigger
records (PRODUCT.md format) and the suppressions the rails made. Rails:
minimum sample, baseline length, hysteresis (a rule re-arms only after the
metric returns near its baseline), cooldown per rule and campaign, and a
global rate limit. ``trigger_id`` is derived from rule, target and window, so a
replay of the same events repeats the same id.

>>> eng = TriggerEngine(load_rules())
>>> for i in range(6):
...     _ = eng.evaluate("c", i * 60_000, (i + 1) * 60_000, 10_000, 300, 30, now_ms=0)
>>> fired, held = eng.evaluate("c", 360_000, 420_000, 10_000, 40, 4, now_ms=0)
>>> [t["action"] for t in fired]
['campaign.pause']
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from river import drift

from stream.core.changes import two_proportion
from stream.core.plainstate import load_page_hinkley, page_hinkley_state
from stream.core.rules import RULES_FILE, Rule, Rules, parse_override, read_rules

log = logging.getLogger(__name__)


def load_rules(path: str | Path | None = None) -> Rules:
    """The typed rules of ``path`` (default: ``stream/rules.yaml``); bad ones raise
    :class:`~stream.core.rules.RulesError` naming the file, rule and field."""
    return read_rules(path or RULES_FILE)


def trigger_id(rule: str, target: Mapping[str, str], window_start: int) -> str:
    parts = "|".join([rule, *(f"{k}={target[k]}" for k in sorted(target)), str(window_start)])
    return hashlib.sha256(parts.encode()).hexdigest()[:24]


def _pct(x: float) -> str:
    return f"{x * 100:.2f}%"


def _clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class TriggerEngine:
    """Rules (typed: :class:`~stream.core.rules.Rules`) with their rails' state per campaign."""

    def __init__(self, config: Rules) -> None:
        self.config = config
        self._merged: dict[int, tuple[object, Mapping[str, Rule]]] = {}  # id -> override, rules
        self.history: dict[str, deque[tuple[int, int, int, int]]] = {}
        self.armed: dict[str, bool] = {}  # "rule|campaign" -> may fire
        self.last_fired: dict[str, int] = {}  # "rule|campaign" -> window_start
        self.sent_minute: tuple[int, int] = (0, 0)  # (minute, count) for the global limit
        self.detectors: dict[str, drift.PageHinkley] = {}  # campaign -> CTR drift detector
        self.drifted: list[tuple[str, int]] = []  # (campaign, window_start) since last drain

    def observe_drift(self, campaign_id: str, window_start: int, views: int, clicks: int) -> None:
        """Page-Hinkley over the campaign's CTR series (in percent), both directions."""
        if not views:
            return
        detector = self.detectors.get(campaign_id) or self.detector(campaign_id)
        detector.update(100 * clicks / views)
        if detector.drift_detected:
            self.drifted.append((campaign_id, window_start))

    def detector(self, campaign_id: str) -> drift.PageHinkley:
        """A new drift detector for ``campaign_id``."""
        detector = self.detectors[campaign_id] = drift.PageHinkley(
            min_instances=5, delta=0.05, threshold=5.0, mode="both"
        )
        return detector

    def drain_drifts(self) -> list[tuple[str, int]]:
        out, self.drifted = self.drifted, []
        return out

    def rules_for(
        self, overrides: Mapping[str, Any] | None, campaign_id: str = ""
    ) -> Mapping[str, Rule]:
        """The rules for a campaign: its settings' ``rules`` merged over the file's.

        A bad override raises :class:`~stream.core.rules.RulesError` (the settings store rejects
        those before they get here). Merges are cached per override object.
        """
        override = (overrides or {}).get("rules")
        if not override:
            return self.config.rules
        hit = self._merged.get(id(override))
        if hit is not None and hit[0] is override:  # the same object: its id was not reused
            return hit[1]
        merged = parse_override(self.config, override, campaign_id or "?")
        if len(self._merged) >= 4096:
            self._merged.clear()
        self._merged[id(override)] = (override, merged)
        return merged

    def evaluate(
        self,
        campaign_id: str,
        window_start: int,
        window_end: int,
        views: int,
        clicks: int,
        purchases: int,
        now_ms: int,
        settings: Mapping[str, Any] | None = None,
    ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        """Evaluate every rule on one closed window; return (triggers, [(rule, reason)])."""
        fired: list[dict[str, Any]] = []
        held: list[tuple[str, str]] = []
        rules = self.rules_for(settings, campaign_id)
        history = self.history.setdefault(
            campaign_id, deque(maxlen=max((r.baseline_windows for r in rules.values()), default=1))
        )
        for name, rule in rules.items():
            if not rule.enabled:
                continue
            past = list(history)[-rule.baseline_windows :]
            if rule.metric == "ctr":
                n, k = views, clicks
                bn, bk = sum(h[1] for h in past), sum(h[2] for h in past)
            else:  # cvr
                n, k = clicks, purchases
                bn, bk = sum(h[2] for h in past), sum(h[3] for h in past)
            if len(past) < rule.min_baseline_windows or bn == 0 or bk == 0:
                continue  # no baseline yet: nothing to compare against
            change = two_proportion(k, n, bk, bn)
            down = rule.direction == "down"
            signed_z = -change.z if down else change.z
            signed_rel = -change.relative if down else change.relative
            key = f"{name}|{campaign_id}"
            if signed_z < rule.exit_z:
                self.armed[key] = True  # back near baseline: hysteresis re-arms
            if not (signed_z >= rule.z and signed_rel >= rule.min_relative):
                continue
            if n < rule.min_sample:
                held.append((name, "min_sample"))
                continue
            if not self.armed.get(key, True):
                held.append((name, "hysteresis"))
                continue
            last = self.last_fired.get(key)
            if last is not None and window_start - last < rule.cooldown_windows * (
                window_end - window_start
            ):
                held.append((name, "cooldown"))
                continue
            minute, count = self.sent_minute
            if now_ms // 60_000 != minute:
                minute, count = now_ms // 60_000, 0
            if count >= self.config.global_.max_triggers_per_minute:
                held.append((name, "rate_limit"))
                continue
            self.sent_minute = (minute, count + 1)
            self.armed[key] = False
            self.last_fired[key] = window_start
            severe = signed_rel >= rule.severe_relative
            action = rule.severe_action if severe and rule.severe_action else rule.action
            fired.append(
                self._trigger(
                    name,
                    rule,
                    action,
                    campaign_id,
                    window_start,
                    window_end,
                    n,
                    k,
                    bn,
                    bk,
                    len(past),
                    change,
                    now_ms,
                )
            )
        history.append((window_start, views, clicks, purchases))
        self.observe_drift(campaign_id, window_start, views, clicks)
        return fired, held

    def _trigger(
        self,
        name: str,
        rule: Rule,
        action: str,
        campaign_id: str,
        ws: int,
        we: int,
        n: int,
        k: int,
        bn: int,
        bk: int,
        windows: int,
        change: Any,
        now_ms: int,
    ) -> dict[str, Any]:
        target = {"campaign_id": campaign_id}
        label = "CTR" if rule.metric == "ctr" else "Conversion rate"
        verb = "fell" if change.relative < 0 else "rose"
        reason = (
            f"{label} of {campaign_id} {verb} {abs(change.relative) * 100:.0f}% to "
            f"{_pct(change.rate)} in the window starting {_clock(ws)} ({k} of {n}) against a "
            f"baseline of {_pct(change.baseline)} over {windows} windows "
            f"(z={change.z:.1f}, p={change.p_value:.1g})."
        )
        params: dict[str, Any] = dict(rule.params)
        return {
            "trigger_id": trigger_id(name, target, ws),
            "action": action,
            "rule": name,
            "target": target,
            "reason": reason,
            "evidence": {
                "metric": rule.metric,
                "window_start": ws,
                "window_end": we,
                "trials": n,
                "successes": k,
                "rate": change.rate,
                "baseline_rate": change.baseline,
                "baseline_windows": windows,
                "baseline_trials": bn,
                "relative_change": change.relative,
                "z": change.z,
                "p_value": change.p_value,
            },
            "params": params,
            "created_at": now_ms,
        }

    def to_state(self) -> dict[str, Any]:
        """Plain data, the drift detectors included (:mod:`stream.core.plainstate`)."""
        return {
            "history": {c: [list(h) for h in d] for c, d in self.history.items()},
            "armed": self.armed,
            "last_fired": self.last_fired,
            "detectors": {c: page_hinkley_state(d) for c, d in self.detectors.items()},
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load :meth:`to_state`.

        Detectors of an earlier release (a pickle, which could run code) are not
        loaded: they start again and detect drift after ``min_instances`` windows.
        """
        size = self.config.history_size
        self.history = {
            c: deque((tuple(h) for h in rows), maxlen=size)
            for c, rows in state.get("history", {}).items()
        }
        self.armed = dict(state.get("armed", {}))
        self.last_fired = dict(state.get("last_fired", {}))
        detectors = state.get("detectors") or {}
        if isinstance(detectors, str):
            log.warning(
                "drift detectors pickled by an earlier release are not loaded: they restart"
            )
            detectors = {}
        self.detectors = {}
        for campaign_id, detector_state in detectors.items():
            load_page_hinkley(self.detector(campaign_id), detector_state)
