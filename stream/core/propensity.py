"""Purchase propensity: a River model scored at each click, learned with delayed labels.

A click is scored from the user's state; its label arrives later: positive when
the user purchases within the attribution window, negative when that window
expires (in event time). At label time the score given at click time updates the
progressive-validation ROC AUC and log loss, then the model learns. High-intent
clicks of consenting users become ``user.send_offer`` triggers, rate-capped per
user.

Features (all observable from the stream): per user lifetime views, clicks,
purchases and revenue, recency, recent (exponentially decayed) views, clicks
and purchases, smoothed CTR relative to the partition's and smoothed conversion
toward the partition's (empirical Bayes), the campaign's smoothed conversion,
unlabelled clicks in flight, hour of day, and one-hots of channel, campaign and
RFM segment. Only the numeric features are standardised (a one-hot seen only
as 1 would scale to 0); logistic regression learns with a 1/√t step size.

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

import hashlib
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from river import cluster, compose, linear_model, metrics, optim, preprocessing

from stream.core import plainstate
from stream.core.rules import UserOffer
from stream.core.triggers import trigger_id

DAY_MS = 86_400_000
RECENT_MS = 600_000  # time constant of the decayed "recent" counts (10 min)
PRIOR_CLICKS = 5.0  # pseudo-clicks shrinking a user's conversion toward the partition's
PRIOR_CAMPAIGN = 20.0  # pseudo-clicks shrinking a campaign's conversion
NUMERIC = (
    "recency_h",
    "views",
    "clicks",
    "purchases",
    "monetary",
    "user_ctr",
    "user_cvr",
    "campaign_cvr",
    "recent_views",
    "recent_clicks",
    "recent_purchases",
    "in_flight",
    "hour_sin",
    "hour_cos",
)
_NUMERIC = frozenset(NUMERIC)
SEGMENTS = 4  # bounded: segment ids label metrics
USER_TTL_MS = 2 * DAY_MS  # idle users kept at least this long (recency_h saturates here)
STATE_FORMAT = 1  # of to_state(); a checkpoint of another format is refused
SWEEPS_PER_TTL = 8  # per-user state is swept each time event time advances by 1/8 of a TTL


def model_factory(
    config: UserOffer,
    attribution_ms: int,
    window_ms: int,
    model_type: type[PropensityModel] | None = None,
    holdout: float = 0.0,
) -> Callable[[], PropensityModel] | None:
    """A factory for the ``user_offer`` section of the rules file (None when disabled).

    >>> model_factory(UserOffer(enabled=False), 60_000, 60_000) is None
    True
    >>> model_factory(UserOffer(min_labels=20), 60_000, 60_000)().min_labels
    20
    """
    if not config.enabled:
        return None
    kind = model_type or PropensityModel
    return lambda: kind(
        attribution_ms,
        min_labels=config.min_labels,
        min_score=config.min_score,
        offer_cap_ms=int(config.cap_hours * 3_600_000),
        window_ms=window_ms,
        holdout=holdout,
    )


def numeric(x: dict[str, float]) -> dict[str, float]:
    """The numeric features of ``x`` (``compose.Select`` would fail on a missing one)."""
    return {k: v for k, v in x.items() if k in _NUMERIC}


def new_model(lr: float = 0.02) -> compose.Pipeline:
    """Scaled numeric features plus raw one-hots → logistic regression, step ``lr/√t``."""
    scaled = compose.FuncTransformer(numeric) | preprocessing.StandardScaler()
    return compose.Pipeline(
        compose.TransformerUnion(scaled, compose.Discard(*NUMERIC)),
        linear_model.LogisticRegression(
            optimizer=optim.SGD(optim.schedulers.InverseScaling(lr, power=0.5))
        ),
    )


_NEW: list[Any] = [0, 0, 0, 0.0, None, 0.0, 0.0, 0.0]  # a user never seen


class _Names:
    """Strings of a checkpoint, each stored once; columns hold their codes."""

    def __init__(self) -> None:
        self._codes: dict[str, int] = {}

    @property
    def names(self) -> list[str]:
        return list(self._codes)  # in code order: a name's code is its insertion index

    def codes(self, names: Iterable[str]) -> np.ndarray:
        table = self._codes
        code = table.setdefault
        return np.array([code(name, len(table)) for name in names], np.int32)


GROUPS = ("offer", "holdout")


def in_holdout(user: str, share: float) -> bool:
    """Whether ``user`` is in the offer holdout of ``share`` (a fixed hash: seeded, stable).

    >>> in_holdout("u-1", 0.0), in_holdout("u-1", 1.0)
    (False, True)
    >>> sum(in_holdout(f"u-{n}", 0.1) for n in range(10_000))
    1004
    """
    if share <= 0.0:
        return False
    digest = hashlib.blake2b(user.encode(), digest_size=8, person=b"pulse-holdout").digest()
    return int.from_bytes(digest, "big") < share * 2.0**64


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


@dataclass
class OfferOutput:
    offers: list[dict[str, Any]] = field(default_factory=list)
    held: list[tuple[str, str]] = field(default_factory=list)
    #: offered and held-out users whose attribution window passed (``pulse.offers``)
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    score: float | None = None


class PropensityModel:
    """Per-partition user state, model, pending labels and offer rails.

    Per-user state lives only in ``users`` (counters, last event time, decayed
    recent counts), ``engaged``, ``segments``, ``pending`` / ``pending_users``
    and ``last_offer``; :meth:`erase_user` clears all of them. ``totals`` and
    ``campaign_stats`` are per partition and per campaign, never per user.

    All of it is bounded in event time (``max_ts``, the newest event seen):

    - ``pending`` / ``pending_users``: a click leaves when labelled, or as a
      negative once ``attribution_ms`` old.
    - ``users``, ``engaged``, ``segments``: a user idle for more than
      ``attribution_ms`` is forgotten when their last pending click expires
      (unconverted clickers); any user idle for more than ``user_ttl_ms``
      (default the longer of ``attribution_ms`` and :data:`USER_TTL_MS`) with
      no click in flight, at the next :meth:`sweep` (viewers, converted buyers).
    - ``last_offer``: an offer older than ``offer_cap_ms + lateness_ms`` caps
      no event that can still arrive (events reach the model at most
      ``lateness_ms`` behind ``max_ts``; by default ``attribution_ms``), so
      :meth:`sweep` drops it.

    :meth:`sweep` runs from :meth:`on_event` each time ``max_ts`` has advanced
    by 1/:data:`SWEEPS_PER_TTL` of the shorter TTL: one pass over the dicts per
    sweep, O(1) per event in between.
    """

    def __init__(
        self,
        attribution_ms: int,
        min_labels: int = 200,
        min_score: float = 0.5,
        offer_cap_ms: int = DAY_MS,
        window_ms: int = 60_000,
        lateness_ms: int | None = None,
        user_ttl_ms: int | None = None,
        holdout: float = 0.0,
    ) -> None:
        self.attribution_ms = attribution_ms
        self.user_ttl_ms = max(attribution_ms, USER_TTL_MS) if user_ttl_ms is None else user_ttl_ms
        self.lateness_ms = attribution_ms if lateness_ms is None else lateness_ms
        self.min_labels = min_labels
        self.min_score = min_score
        self.offer_cap_ms = offer_cap_ms
        self.window_ms = window_ms
        self.holdout = holdout  # share of eligible users who get no offer (by hash)
        self.model = new_model()
        self.segmenter = cluster.KMeans(n_clusters=SEGMENTS, halflife=0.1, sigma=1.0, seed=7)
        # River draws the random starting centers lazily, per feature, in set order (which
        # varies with PYTHONHASHSEED): draw them in a fixed order so every process agrees.
        for center in self.segmenter.centers.values():
            for key in ("r", "f", "m"):
                _ = center[key]
        self.segments: dict[str, int] = {}  # user -> segment as of their last click/purchase
        self.rocauc = metrics.ROCAUC()
        self.logloss = metrics.LogLoss()
        self.labels = 0
        # user -> [views, clicks, purchases, revenue, last_ts, recent views, recent clicks,
        # recent purchases]; the recent counts decay with RECENT_MS from last_ts
        self.users: dict[str, list[Any]] = {}
        self.totals = [0, 0, 0]  # views, clicks, purchases of the partition
        self.campaign_stats: dict[str, list[int]] = {}  # campaign -> [clicks, purchases]
        self.engaged: dict[str, dict[str, int]] = {}  # user -> campaign -> clicks
        # unlabelled clicks [ts, user, features, score] in arrival order, and the same
        # entries per user; a purchase labels the user's entries (user set to None)
        self.pending: deque[list[Any]] = deque()
        self.pending_users: dict[str, list[list[Any]]] = {}
        self.last_offer: dict[str, int] = {}
        # offered or held-out users until their attribution window passes: user ->
        # [group, ts, trigger_id, campaign, purchases, revenue, unconverted purchases]
        self.watch: dict[str, list[Any]] = {}
        # ids whose state was merged into an identity here -> the newest event time it
        # held: a handover applied again (a replay) is not counted twice
        self.merged_from: dict[str, int] = {}
        self.max_ts = 0
        self.next_sweep = 0  # max_ts at which on_event() calls sweep()
        self.next_outcomes = 0  # max_ts at which watched users are checked again

    def rfm(self, user: str, ts: int) -> dict[str, float]:
        """Recency (days, capped at 30), frequency and monetary of a user, log-scaled."""
        _views, clicks, purchases, revenue, last_ts = (self.users.get(user) or _NEW)[:5]
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
        """The user's features at this event (before it updates their state)."""
        state = self.users.get(user) or _NEW
        views, clicks, purchases, revenue, last_ts, r_views, r_clicks, r_buys = state
        ts = event["ts"]
        if last_ts is not None:
            decay = math.exp(-(ts - last_ts) / RECENT_MS)
            r_views, r_clicks, r_buys = r_views * decay, r_clicks * decay, r_buys * decay
        all_views, all_clicks, all_buys = self.totals
        ctr = (all_clicks + 1) / (all_views + 20)
        cvr = (all_buys + 1) / (all_clicks + 10)
        user_cvr = (purchases + PRIOR_CLICKS * cvr) / (clicks + PRIOR_CLICKS)
        cid = event.get("campaign_id")
        c_clicks, c_buys = self.campaign_stats.get(cid or "") or (0, 0)
        campaign_cvr = (c_buys + PRIOR_CAMPAIGN * cvr) / (c_clicks + PRIOR_CAMPAIGN)
        hour = (ts // 3_600_000) % 24
        x = {
            "recency_h": min(48.0, (ts - last_ts) / 3_600_000) if last_ts is not None else 48.0,
            "views": math.log1p(views),
            "clicks": math.log1p(clicks),
            "purchases": math.log1p(purchases),
            "monetary": math.log1p(revenue),
            "user_ctr": math.log((clicks + 1) / (views * ctr + 1)),
            "user_cvr": _logit(min(0.99, user_cvr)),
            "campaign_cvr": _logit(min(0.99, campaign_cvr)),
            "recent_views": math.log1p(r_views),
            "recent_clicks": math.log1p(r_clicks),
            "recent_purchases": math.log1p(r_buys),
            "in_flight": math.log1p(len(self.pending_users.get(user, ()))),
            "hour_sin": math.sin(2 * math.pi * hour / 24),
            "hour_cos": math.cos(2 * math.pi * hour / 24),
            f"channel={event.get('channel', 'web')}": 1.0,
        }
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
            entry = [ts, user, x, p]
            self.pending.append(entry)
            self.pending_users.setdefault(user, []).append(entry)
            cid = event.get("campaign_id")
            if cid:
                per = self.engaged.setdefault(user, {})
                per[cid] = per.get(cid, 0) + 1
            self._maybe_offer(user, event, p, out)
        elif etype == "purchase" and self.pending_users.get(user):
            self._label_user(user, ts)
        if etype == "purchase" and user in self.watch:
            self._watch_purchase(self.watch[user], event)
        if etype != "view":
            self.segmenter.learn_one(self.rfm(user, ts))
            if etype == "purchase":
                self.segments.pop(user, None)  # RFM changed: recompute on next use
        self._update_user(user, event)
        self.expire()
        if self.watch:
            self._close_watch(out)
        if self.max_ts >= self.next_sweep:
            self.sweep()
        return out

    def sweep(self) -> int:
        """Forget per-user state past its time-to-live; return how many entries went.

        Users idle for more than ``user_ttl_ms`` with no click in flight (their
        counters, engagement and cached segment) and offers older than
        ``offer_cap_ms + lateness_ms``. :meth:`on_event` calls it periodically.

        >>> m = PropensityModel(attribution_ms=60_000, user_ttl_ms=60_000)
        >>> for ts, user in ((0, "a"), (50_000, "b"), (100_000, "c")):
        ...     _ = m.on_event({"type": "view", "ts": ts, "user_id": user})
        >>> sorted(m.users)  # swept at the last event: "a" was idle 100 s > 60 s
        ['b', 'c']
        """
        idle_before = self.max_ts - self.user_ttl_ms
        users, pending = self.users, self.pending_users
        stale = [u for u, row in users.items() if row[4] < idle_before and u not in pending]
        for user in stale:
            del users[user]
        dropped = len(stale)
        for per_user in (self.engaged, self.segments):  # kept only for users still held
            gone = [u for u in per_user if u not in users]
            for user in gone:
                del per_user[user]
            dropped += len(gone)
        offer_before = self.max_ts - self.offer_cap_ms - self.lateness_ms
        old = [u for u, ts in self.last_offer.items() if ts < offer_before]
        for user in old:
            del self.last_offer[user]
        merged_before = self.max_ts - self.user_ttl_ms
        self.merged_from = {u: t for u, t in self.merged_from.items() if t >= merged_before}
        ttl = min(self.user_ttl_ms, self.offer_cap_ms + self.lateness_ms)
        self.next_sweep = self.max_ts + max(1, ttl // SWEEPS_PER_TTL)
        return dropped + len(old)

    def _update_user(self, user: str, event: dict[str, Any]) -> None:
        ts = event["ts"]
        state = self.users.get(user)
        if state is None:
            state = self.users[user] = [0, 0, 0, 0.0, ts, 0.0, 0.0, 0.0]
        elif ts != state[4]:
            decay = math.exp(-(ts - state[4]) / RECENT_MS)
            state[5] *= decay
            state[6] *= decay
            state[7] *= decay
        etype = event["type"]
        totals = self.totals
        if etype == "view":
            state[0] += 1
            state[5] += 1.0
            totals[0] += 1
        else:
            i = 1 if etype == "click" else 2
            state[i] += 1
            state[5 + i] += 1.0
            totals[i] += 1
            cid = event.get("campaign_id")
            if cid:
                per = self.campaign_stats.get(cid)
                if per is None:
                    per = self.campaign_stats[cid] = [0, 0]
                per[i - 1] += 1
            if i == 2:  # in the reporting currency (windows converted it; None: no rate)
                state[3] += float(event.get("revenue_reporting", event.get("revenue")) or 0.0)
        state[4] = ts

    def to_state(self) -> dict[str, Any]:
        """Everything learned as plain data (:mod:`stream.core.plainstate`): the checkpoint.

        Per-user state goes in columns: numpy arrays and lists of names, no
        user-given string is ever a key.

        >>> m = PropensityModel(attribution_ms=60_000)
        >>> _ = m.on_event({"type": "click", "ts": 0, "user_id": "u", "campaign_id": "c"})
        >>> twin = PropensityModel(attribution_ms=60_000)
        >>> twin.load_state(plainstate.loads(plainstate.dumps(m.to_state())))
        >>> plainstate.dumps(twin.to_state()) == plainstate.dumps(m.to_state())
        True
        """
        names = _Names()
        rows = list(self.users.values())
        pending = list(self.pending)
        held = [e for e in pending if e[1] is not None]
        engaged = [(u, c, n) for u, per in self.engaged.items() for c, n in per.items()]
        return {
            "format": STATE_FORMAT,
            "labels": self.labels,
            "totals": self.totals,
            "max_ts": self.max_ts,
            "next_sweep": self.next_sweep,
            "users": {
                "user": names.codes(self.users),
                "counts": np.array([r[:3] + r[4:5] for r in rows], np.int64).reshape(-1, 4),
                "amounts": np.array([r[3:4] + r[5:] for r in rows], np.float64).reshape(-1, 4),
            },
            "campaigns": {
                "campaign": names.codes(self.campaign_stats),
                "counts": np.array(list(self.campaign_stats.values()), np.int64).reshape(-1, 2),
            },
            "engaged": {
                "user": names.codes(u for u, _, _ in engaged),
                "campaign": names.codes(c for _, c, _ in engaged),
                "clicks": np.array([n for _, _, n in engaged], np.int64),
            },
            "segments": {
                "user": names.codes(self.segments),
                "segment": np.array(list(self.segments.values()), np.int64),
            },
            "last_offer": {
                "user": names.codes(self.last_offer),
                "ts": np.array(list(self.last_offer.values()), np.int64),
            },
            "merged_from": {
                "user": names.codes(self.merged_from),
                "ts": np.array(list(self.merged_from.values()), np.int64),
            },
            "watch": {
                "user": names.codes(self.watch),
                "group": names.codes(w[0] for w in self.watch.values()),
                "trigger": names.codes(w[2] for w in self.watch.values()),
                "campaign": names.codes(w[3] for w in self.watch.values()),
                "counts": np.array(
                    [[w[1], w[4], w[6]] for w in self.watch.values()], np.int64
                ).reshape(-1, 3),
                "revenue": np.array([w[5] for w in self.watch.values()], np.float64),
            },
            "pending": {  # in arrival order; labelled entries (no user) hold no features
                "ts": np.array([e[0] for e in pending], np.int64),
                "score": np.array([e[3] for e in pending], np.float64),
                "user": names.codes("" if e[1] is None else e[1] for e in pending),
                "labelled": np.array([e[1] is None for e in pending], np.int32),
                "numeric": np.array([[e[2][k] for k in NUMERIC] for e in held], np.float64).reshape(
                    -1, len(NUMERIC)
                ),
                "one_hot": names.codes(
                    "\x1f".join(k for k in e[2] if k not in _NUMERIC) for e in held
                ),
            },
            "names": names.names,
            "model": plainstate.pipeline_state(self.model),
            "segmenter": plainstate.kmeans_state(self.segmenter),
            "rocauc": plainstate.rocauc_state(self.rocauc),
            "logloss": plainstate.mean_state(self.logloss._mean),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Set a :meth:`to_state` checkpoint into this (fresh) model; the settings stay ours.

        A record of another shape raises (``ValueError``, ``TypeError``, ``KeyError``,
        ``IndexError``).
        """
        if state.get("format") != STATE_FORMAT:
            raise ValueError(
                f"propensity checkpoint format {state.get('format')!r}, expected {STATE_FORMAT}"
            )
        names = [str(n) for n in state["names"]]

        def named(codes: np.ndarray) -> list[str]:
            if codes.size and (codes.min() < 0 or codes.max() >= len(names)):
                raise ValueError("a name code outside the checkpoint's names")
            return [names[i] for i in codes.tolist()]

        def column(part: dict[str, Any], key: str, n: int) -> list[Any]:
            values = part[key]
            out = (
                named(values)
                if key in ("user", "campaign", "group", "trigger")
                else values.tolist()
            )
            if len(out) != n:
                raise ValueError(f"{key}: {len(out)} values for {n} rows")
            return out

        def table(part: dict[str, Any], *keys: str) -> list[list[Any]]:
            n = len(part["user" if "user" in part else "campaign"])
            return [column(part, k, n) for k in keys]

        self.labels = int(state["labels"])
        self.totals = [int(n) for n in state["totals"]]
        self.max_ts = int(state["max_ts"])
        self.next_sweep = int(state["next_sweep"])
        users, counts, amounts = table(state["users"], "user", "counts", "amounts")
        self.users = {
            u: [c[0], c[1], c[2], a[0], c[3], a[1], a[2], a[3]]
            for u, c, a in zip(users, counts, amounts, strict=True)
        }
        ids, per = table(state["campaigns"], "campaign", "counts")
        self.campaign_stats = dict(zip(ids, per, strict=True))
        self.engaged = {}
        for u, c, n in zip(*table(state["engaged"], "user", "campaign", "clicks"), strict=True):
            self.engaged.setdefault(u, {})[c] = n
        self.segments = dict(zip(*table(state["segments"], "user", "segment"), strict=True))
        self.last_offer = dict(zip(*table(state["last_offer"], "user", "ts"), strict=True))
        merged = state.get("merged_from")
        self.merged_from = (
            {} if merged is None else dict(zip(*table(merged, "user", "ts"), strict=True))
        )
        watch = state.get("watch")
        self.watch = {}
        if watch is not None:
            cols = table(watch, "user", "group", "trigger", "campaign", "revenue")
            for (user, group, tid, cid, revenue), (ts, n, unconverted) in zip(
                zip(*cols, strict=True), watch["counts"].tolist(), strict=True
            ):
                if group not in GROUPS:
                    raise ValueError(f"watch: unknown group {group!r}")
                self.watch[user] = [group, ts, tid, cid, n, revenue, unconverted]
        part = state["pending"]
        ts, score, users, labelled = table(part, "ts", "score", "user", "labelled")
        numeric = part["numeric"].tolist()
        one_hot = named(part["one_hot"])
        if len(numeric) != len(one_hot) or len(numeric) != len(ts) - sum(labelled):
            raise ValueError("pending: features for a different number of clicks")
        self.pending = deque()
        self.pending_users = {}
        features = iter(zip(numeric, one_hot, strict=True))
        for t, p, user, done in zip(ts, score, users, labelled, strict=True):
            if done:
                self.pending.append([t, None, None, p])
                continue
            values, hots = next(features)
            x = dict(zip(NUMERIC, values, strict=True))
            x.update(dict.fromkeys(hots.split("\x1f") if hots else (), 1.0))
            entry = [t, user, x, p]
            self.pending.append(entry)
            self.pending_users.setdefault(user, []).append(entry)
        plainstate.load_pipeline(self.model, state["model"])
        plainstate.load_kmeans(self.segmenter, state["segmenter"])
        plainstate.load_rocauc(self.rocauc, state["rocauc"])
        plainstate.load_mean(self.logloss._mean, state["logloss"])

    def _learn(self, ts: int, user: str, x: dict[str, float], p: float, y: bool) -> None:
        """One delayed label for the click of ``user`` at ``ts`` scored ``p``."""
        self.rocauc.update(y, p)
        self.logloss.update(y, p)
        self.model.learn_one(x, y)
        self.labels += 1

    def _label_user(self, user: str, ts: int) -> None:
        """The user's clicks inside the attribution window before ``ts`` are positives."""
        keep = []
        for entry in self.pending_users.pop(user, ()):
            if 0 <= ts - entry[0] <= self.attribution_ms:
                self._learn(entry[0], user, entry[2], entry[3], True)
                entry[1] = entry[2] = None  # labelled: expire() drops it
            else:
                keep.append(entry)
        if keep:
            self.pending_users[user] = keep

    def expire(self) -> None:
        """Clicks whose attribution window passed without a purchase are negatives."""
        cutoff = self.max_ts - self.attribution_ms
        pending = self.pending
        while pending and (pending[0][0] < cutoff or pending[0][1] is None):
            entry = pending.popleft()
            ts, user, x, p = entry
            if user is None:
                continue  # labelled positive by a purchase
            self._learn(ts, user, x, p, False)
            mine = self.pending_users.get(user) or []
            for i, other in enumerate(mine):  # by identity: usually the first
                if other is entry:
                    del mine[i]
                    break
            if not mine:
                self.pending_users.pop(user, None)
                if (
                    self.max_ts - (self.users.get(user) or [0, 0, 0, 0, ts])[4]
                    > self.attribution_ms
                ):
                    self.users.pop(user, None)  # bounded memory: forget idle users
                    self.engaged.pop(user, None)
                    self.segments.pop(user, None)

    def erase_user(self, user: str) -> bool:
        """Forget everything held about ``user`` (``pulse erase``); True if anything was held.

        Removes the user's counters, engagement, segment, offer cap and pending
        (unlabelled) clicks with their features. The learned weights are not
        per-user and stay. New per-user state must be removed here too
        (tests/stream/core/test_privacy.py checks the checkpoint and the pickled model).
        """
        held = False
        maps = (
            self.users, self.engaged, self.segments, self.pending_users, self.last_offer,
            self.watch, self.merged_from,
        )  # fmt: skip
        for per_user in maps:
            held = per_user.pop(user, None) is not None or held
        if any(item[1] == user for item in self.pending):
            self.pending = deque(item for item in self.pending if item[1] != user)
            held = True
        return held

    def take_user(self, user: str) -> dict[str, Any] | None:
        """Remove and return ``user``'s state (it moves to the identity they were merged
        into, :meth:`merge_user`): counters, engagement, offer cap, clicks awaiting a label
        with their features, and an offer's follow-up; None when none is held."""
        row = self.users.pop(user, None)
        pending = self.pending_users.pop(user, [])
        if pending:
            moved = {id(e) for e in pending}
            self.pending = deque(e for e in self.pending if id(e) not in moved)
        taken = {
            "row": row,
            "engaged": self.engaged.pop(user, None),
            "last_offer": self.last_offer.pop(user, None),
            "pending": [[e[0], e[2], e[3]] for e in pending],
            "watch": self.watch.pop(user, None),
        }
        self.segments.pop(user, None)
        if row is None and not pending and taken["watch"] is None:
            return None
        return taken

    def merge_user(self, user: str, source: str, taken: dict[str, Any]) -> None:
        """Add the state of ``source`` (:meth:`take_user`) to ``user``'s: counts add up,
        recent counts decay to the newer time, pending clicks wait for ``user``'s
        purchases. Applied once per ``source`` and state (a replay changes nothing)."""
        row = taken.get("row")
        pending = [(int(ts), dict(x), float(p)) for ts, x, p in taken.get("pending") or ()]
        watch = taken.get("watch")
        if row is not None and (len(row) != 8 or not all(type(v) in (int, float) for v in row)):
            raise ValueError("a handover's counters are not 8 numbers")
        if any(not set(x).issuperset(_NUMERIC)
               or not all(type(v) in (int, float) for v in x.values())
               for _, x, _ in pending):  # fmt: skip
            raise ValueError("a handover's click awaiting a label lacks its numeric features")
        if watch is not None and (len(watch) != 7 or watch[0] not in GROUPS):
            raise ValueError("a handover's offer follow-up is not [group, ts, trigger, ...]")
        times = [ts for ts, _, _ in pending] + ([int(row[4])] if row else [])
        version = max(times, default=-1)
        if self.merged_from.get(source, -2) >= version:
            return
        self.merged_from[source] = version
        if row is not None:
            mine = self.users.get(user)
            if mine is None:
                self.users[user] = [*row[:4], int(row[4]), *row[5:]]
            else:
                newer = max(mine[4], int(row[4]))
                ours = math.exp(-(newer - mine[4]) / RECENT_MS)
                theirs = math.exp(-(newer - int(row[4])) / RECENT_MS)
                for i in range(4):
                    mine[i] += row[i]
                for i in range(5, 8):
                    mine[i] = mine[i] * ours + row[i] * theirs
                mine[4] = newer
        for cid, n in (taken.get("engaged") or {}).items():
            per = self.engaged.setdefault(user, {})
            per[cid] = per.get(cid, 0) + int(n)
        offered = taken.get("last_offer")
        if offered is not None:
            self.last_offer[user] = max(self.last_offer.get(user, 0), int(offered))
        if watch is not None and user not in self.watch:
            self.watch[user] = list(watch)
        for ts, x, p in pending:
            entry = [ts, user, x, p]
            at = len(self.pending)
            while at and self.pending[at - 1][0] > ts:  # in time order: expiry stays in order
                at -= 1
            self.pending.insert(at, entry)
            mine_pending = self.pending_users.setdefault(user, [])
            mine_pending.append(entry)
            mine_pending.sort(key=lambda e: e[0])
        self.segments.pop(user, None)

    def _watch_purchase(self, watched: list[Any], event: dict[str, Any]) -> None:
        """A purchase inside the attribution window after the offer (or the holdout)."""
        if not 0 <= event["ts"] - watched[1] <= self.attribution_ms:
            return
        watched[4] += 1
        value = event.get("revenue_reporting", event.get("revenue"))
        if value is None:
            watched[6] += 1  # no exchange rate: counted, never summed raw
        else:
            watched[5] += float(value)

    def _close_watch(self, out: OfferOutput) -> None:
        """Outcomes of users whose attribution window after the offer has passed."""
        cutoff = self.max_ts - self.attribution_ms
        if self.max_ts < self.next_outcomes:
            return
        self.next_outcomes = self.max_ts + max(1, self.attribution_ms // SWEEPS_PER_TTL)
        for user in [u for u, w in self.watch.items() if w[1] < cutoff]:
            self.finish(user, out)

    def finish(self, user: str, out: OfferOutput) -> None:
        """Write ``user``'s outcome and stop following them."""
        group, ts, tid, cid, n, revenue, unconverted = self.watch.pop(user)
        out.outcomes.append(
            {
                "trigger_id": tid,
                "group": group,
                "user_id": user,
                "campaign_id": cid,
                "offered_at": ts,
                "window_ms": self.attribution_ms,
                "converted": n > 0,
                "purchases": n,
                "revenue": round(revenue, 6),
                "unconverted": unconverted,
            }
        )

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
        tid = trigger_id("user_offer", target, ws)
        if user in self.watch:  # offered again before the last window passed: close it
            self.finish(user, out)
        group = "holdout" if in_holdout(user, self.holdout) else "offer"
        self.watch[user] = [group, ts, tid, cid, 0, 0.0, 0]
        if group == "holdout":
            out.held.append(("user_offer", "holdout"))
            return
        auc = float(self.rocauc.get())
        out.offers.append(
            {
                "trigger_id": tid,
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
                "params": {"offer": {"campaign_id": offer}, "propensity": p},
                "created_at": ts,
            }
        )
