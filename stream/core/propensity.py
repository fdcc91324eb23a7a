"""Purchase propensity: a River model scored at each click, learned with delayed labels.

A click is scored from the user's state; its label arrives later: positive when
the user purchases within the attribution window, negative when that window
expires (in event time). At label time the score given at click time updates the
progressive-validation ROC AUC and log loss, then the model learns. High-intent
clicks of consenting users become ``user.send_offer`` triggers, rate-capped per
user.

>>> m = PropensityModel(attribution_ms=60_000, min_labels=0, min_score=0.0)
>>> click = {"type": "click", "ts": 0, "user_id": "u", "campaign_id": "c",
...          "channel": "web", "consent": {"marketing": True}}
>>> out = m.on_event(click)
>>> [t["action"] for t in out.offers]
['user.send_offer']
>>> _ = m.on_event({"type": "purchase", "ts": 5_000, "user_id": "u", "revenue": 9.0,
...                 "channel": "web"})
>>> m.labels
1
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from river import cluster, compose, linear_model, metrics, optim, preprocessing

from stream.core.triggers import trigger_id

DAY_MS = 86_400_000
SEGMENTS = 4  # bounded: segment ids label metrics


def model_factory(
    config: dict[str, Any], attribution_ms: int, window_ms: int
) -> Callable[[], PropensityModel] | None:
    """A factory for the ``user_offer`` section of the rules file (None when disabled)."""
    if not config.get("enabled", True):
        return None
    return lambda: PropensityModel(
        attribution_ms,
        min_labels=int(config.get("min_labels", 200)),
        min_score=float(config.get("min_score", 0.5)),
        offer_cap_ms=int(float(config.get("cap_hours", 24)) * 3_600_000),
        window_ms=window_ms,
    )


def new_model() -> compose.Pipeline:
    return compose.Pipeline(
        preprocessing.StandardScaler(),
        linear_model.LogisticRegression(optimizer=optim.SGD(0.05)),
    )


@dataclass
class OfferOutput:
    offers: list[dict[str, Any]] = field(default_factory=list)
    held: list[tuple[str, str]] = field(default_factory=list)
    score: float | None = None


class PropensityModel:
    """Per-partition user state, model, pending labels and offer rails."""

    def __init__(
        self,
        attribution_ms: int,
        min_labels: int = 200,
        min_score: float = 0.5,
        offer_cap_ms: int = DAY_MS,
        window_ms: int = 60_000,
    ) -> None:
        self.attribution_ms = attribution_ms
        self.min_labels = min_labels
        self.min_score = min_score
        self.offer_cap_ms = offer_cap_ms
        self.window_ms = window_ms
        self.model = new_model()
        self.segmenter = cluster.KMeans(n_clusters=SEGMENTS, halflife=0.1, sigma=1.0, seed=7)
        self.segments: dict[str, int] = {}  # user -> segment as of their last click/purchase
        self.rocauc = metrics.ROCAUC()
        self.logloss = metrics.LogLoss()
        self.labels = 0
        self.users: dict[
            str, list[Any]
        ] = {}  # user -> [views, clicks, purchases, revenue, last_ts]
        self.engaged: dict[str, dict[str, int]] = {}  # user -> campaign -> clicks
        self.pending: deque[tuple[int, str, dict[str, float], float]] = deque()
        self.pending_users: dict[str, int] = {}
        self.last_offer: dict[str, int] = {}
        self.max_ts = 0

    def rfm(self, user: str, ts: int) -> dict[str, float]:
        """Recency (days, capped at 30), frequency and monetary of a user, log-scaled."""
        _views, clicks, purchases, revenue, last_ts = self.users.get(user) or [0, 0, 0, 0.0, None]
        recency = min(30.0, (ts - last_ts) / DAY_MS) if last_ts is not None else 30.0
        return {
            "r": recency / 30.0,
            "f": math.log1p(clicks + purchases) / 5.0,
            "m": math.log1p(revenue) / 5.0,
        }

    def segment(self, user: str, ts: int) -> int:
        """The user's RFM segment from the online k-means (0 … SEGMENTS-1)."""
        return int(self.segmenter.predict_one(self.rfm(user, ts)))

    def user_segment(self, user: str, ts: int) -> int:
        """Cached :meth:`segment`, refreshed at clicks and purchases (cheap for views)."""
        seg = self.segments.get(user)
        if seg is None:
            seg = self.segments[user] = self.segment(user, ts)
        return seg

    def features(self, user: str, event: dict[str, Any]) -> dict[str, float]:
        views, clicks, purchases, revenue, last_ts = self.users.get(user) or [0, 0, 0, 0.0, None]
        ts = event["ts"]
        hour = (ts // 3_600_000) % 24
        x = {
            "recency_h": min(48.0, (ts - last_ts) / 3_600_000) if last_ts is not None else 48.0,
            "views": math.log1p(views),
            "clicks": math.log1p(clicks),
            "purchases": math.log1p(purchases),
            "monetary": math.log1p(revenue),
            "user_ctr": clicks / (views + 1),
            "user_cvr": purchases / (clicks + 1),
            "hour_sin": math.sin(2 * math.pi * hour / 24),
            "hour_cos": math.cos(2 * math.pi * hour / 24),
            f"channel={event.get('channel', 'web')}": 1.0,
        }
        cid = event.get("campaign_id")
        if cid:
            x[f"campaign={cid}"] = 1.0
        segment = self.segments[user] = self.segment(user, ts)
        x[f"segment={segment}"] = 1.0
        return x

    def on_event(self, event: dict[str, Any]) -> OfferOutput:
        out = OfferOutput()
        user = event.get("user_id") or event.get("anonymous_id") or ""
        ts = event["ts"]
        etype = event["type"]
        if ts > self.max_ts:
            self.max_ts = ts
        if etype == "click":
            x = self.features(user, event)
            p = float(self.model.predict_proba_one(x).get(True, 0.0))
            out.score = p
            self.pending.append((ts, user, x, p))
            self.pending_users[user] = self.pending_users.get(user, 0) + 1
            cid = event.get("campaign_id")
            if cid:
                per = self.engaged.setdefault(user, {})
                per[cid] = per.get(cid, 0) + 1
            self._maybe_offer(user, event, p, out)
        elif etype == "purchase" and self.pending_users.get(user):
            self._label_user(user, ts)
        if etype != "view":
            self.segmenter.learn_one(self.rfm(user, ts))
            if etype == "purchase":
                self.segments.pop(user, None)  # RFM changed: recompute on next use
        state = self.users.get(user)
        if state is None:
            state = self.users[user] = [0, 0, 0, 0.0, None]
        if etype == "view":
            state[0] += 1
        elif etype == "click":
            state[1] += 1
        else:
            state[2] += 1
            state[3] += float(event.get("revenue") or 0.0)
        state[4] = ts
        self.expire()
        return out

    def _learn(self, x: dict[str, float], p: float, y: bool) -> None:
        self.rocauc.update(y, p)
        self.logloss.update(y, p)
        self.model.learn_one(x, y)
        self.labels += 1

    def _label_user(self, user: str, ts: int) -> None:
        keep: deque[tuple[int, str, dict[str, float], float]] = deque()
        for item in self.pending:
            if item[1] == user and 0 <= ts - item[0] <= self.attribution_ms:
                self._learn(item[2], item[3], True)
            else:
                keep.append(item)
        self.pending = keep
        self.pending_users.pop(user, None)

    def expire(self) -> None:
        """Clicks whose attribution window passed without a purchase are negatives."""
        cutoff = self.max_ts - self.attribution_ms
        pending = self.pending
        while pending and pending[0][0] < cutoff:
            ts, user, x, p = pending.popleft()
            self._learn(x, p, False)
            left = self.pending_users.get(user, 1) - 1
            if left > 0:
                self.pending_users[user] = left
            else:
                self.pending_users.pop(user, None)
                if (
                    self.max_ts - (self.users.get(user) or [0, 0, 0, 0, ts])[4]
                    > self.attribution_ms
                ):
                    self.users.pop(user, None)  # bounded memory: forget idle users
                    self.engaged.pop(user, None)
                    self.segments.pop(user, None)

    def _maybe_offer(self, user: str, event: dict[str, Any], p: float, out: OfferOutput) -> None:
        if p < self.min_score:
            return
        if self.labels < self.min_labels:
            out.held.append(("user_offer", "warmup"))
            return
        if (event.get("consent") or {}).get("marketing") is not True:
            out.held.append(("user_offer", "consent"))
            return
        ts = event["ts"]
        last = self.last_offer.get(user)
        if last is not None and ts - last < self.offer_cap_ms:
            out.held.append(("user_offer", "frequency_cap"))
            return
        self.last_offer[user] = ts
        engaged = self.engaged.get(user) or {}
        offer = max(engaged, key=lambda c: (engaged[c], c)) if engaged else event.get("campaign_id")
        cid = event.get("campaign_id") or offer or ""
        target = {"user_id": user, "campaign_id": cid}
        ws = ts - ts % self.window_ms
        auc = float(self.rocauc.get())
        out.offers.append(
            {
                "trigger_id": trigger_id("user_offer", target, ws),
                "action": "user.send_offer",
                "rule": "user_offer",
                "target": target,
                "reason": (
                    f"User {user} clicked {cid} with purchase propensity {p:.2f} "
                    f"(threshold {self.min_score:.2f}; model ROC AUC {auc:.2f} over "
                    f"{self.labels} labels); offer {offer}, the campaign they engaged with most "
                    f"({engaged.get(offer or '', 0)} clicks)."
                ),
                "evidence": {
                    "score": p,
                    "threshold": self.min_score,
                    "model_rocauc": auc,
                    "model_labels": self.labels,
                    "click_ts": ts,
                    "window_start": ws,
                    "window_end": ws + self.window_ms,
                },
                "params": {"offer": {"campaign_id": offer}},
                "created_at": ts,
            }
        )
