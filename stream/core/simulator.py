"""Deterministic synthetic marketing traffic: views, clicks, purchases and their anomalies.

Pure logic (no Kafka, Faust or HTTP): the same :class:`SimConfig` always yields the
same bytes, so a simulation can be sent live (``pulse simulate``), written to a file
for ``pulse replay`` / ``pulse backtest``, or checked against its ground truth
(:attr:`Simulator.truth`) in tests.

The funnel: each view picks a user (activity-weighted), a campaign (traffic-weighted),
the user's variant of it and a channel; it becomes a click with the variant's CTR
(× channel × user affinity × scenario) 1–20 s later, and a click becomes a purchase
with the user's latent propensity (× a campaign factor) 30 s – 30 min later. On top
come duplicates (the same bytes re-sent), late events (event time 10–30 min ago) and
malformed items (not JSON, not an object, failing the schema, too large).

>>> sim = Simulator(SimConfig(rate=500, duration_s=4, seed=7))
>>> items = [item for batch in sim.batches(batch_ms=100) for item in batch.items]
>>> 1800 <= len(items) <= 2200
True
>>> first = next(i for i in items if i.kind == "valid")
>>> ev = first.event
>>> ev["type"], first.key == (ev.get("user_id") or ev["anonymous_id"]).encode()
('view', True)
>>> sorted(sim.truth.kinds) == ["duplicate", "late", "malformed", "valid"]
True
"""

from __future__ import annotations

import heapq
import math
import random
import time
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, NamedTuple

import orjson

from stream.core.browsing import Catalog

SCENARIOS = ("steady", "ctr-drop", "surge")

CHANNELS = ("web", "mobile", "email", "social", "search", "display")
_CHANNEL_WEIGHTS = (0.34, 0.26, 0.08, 0.14, 0.10, 0.08)
_CHANNEL_CTR_RAW = (1.0, 0.9, 1.4, 0.8, 1.8, 0.5)
_CHANNEL_NORM = sum(w * c for w, c in zip(_CHANNEL_WEIGHTS, _CHANNEL_CTR_RAW, strict=True))
#: CTR multiplier per channel, normalised so the traffic-weighted mean is 1.
CHANNEL_CTR = tuple(c / _CHANNEL_NORM for c in _CHANNEL_CTR_RAW)

_CURRENCIES = ("EUR", "eur", "USD", "usd", "GBP", "CHF")
#: US dollars per unit of each currency the simulator sends (``pulse demo`` sets these)
SIM_USD_RATES = {"USD": 1.0, "EUR": 1.08, "GBP": 1.27, "CHF": 1.13}


def sim_rates(reporting: str) -> dict[str, float]:
    """Rates into ``reporting`` for the simulator's currencies (none if it is not one of them).

    >>> sim_rates("EUR")
    {'USD': 0.925926, 'GBP': 1.175926, 'CHF': 1.046296}
    """
    base = SIM_USD_RATES.get(reporting)
    if base is None:
        return {}
    return {c: round(v / base, 6) for c, v in SIM_USD_RATES.items() if c != reporting}


_CURRENCY_WEIGHTS = (0.62, 0.06, 0.14, 0.10, 0.05, 0.03)
_LOCALES = ("de-DE", "en-GB", "en-US", "fr-FR", "es-ES", "it-IT", "nl-NL", "pl-PL")
_TIMEZONES = {
    "de-DE": "Europe/Berlin",
    "en-GB": "Europe/London",
    "en-US": "America/New_York",
    "fr-FR": "Europe/Paris",
    "es-ES": "Europe/Madrid",
    "it-IT": "Europe/Rome",
    "nl-NL": "Europe/Amsterdam",
    "pl-PL": "Europe/Warsaw",
}
_CART_DELAY_MS = (2_000, 20_000)  # click -> add to cart
_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 Version/17.4 Safari/605.1",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/124.0 Mobile Safari/537.36",
    "PulseShop/5.2.1 (Android 13; SM-S911B)",
    "PulseShop/5.2.0 (iOS 17.4; iPhone15,2)",
)
#: Expected DLQ reasons of malformed items and how often each is generated.
_MALFORMED_REASONS = ("invalid_json", "not_object", "schema", "too_large")
_MALFORMED_WEIGHTS = (0.35, 0.20, 0.40, 0.05)

DEFAULT_START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z: fixed so output is reproducible
_CLICK_DELAY_MS = (1_000, 20_000)
_PURCHASE_MIN_MS = 30_000
_PURCHASE_MEAN_EXTRA_MS = 150_000.0  # exponential tail above the 30 s minimum
_PURCHASE_MAX_MS = 1_800_000
_LATE_MS = (600_000, 1_800_000)
_SEND_DELAY_MEAN_MS = 250.0
_SEND_DELAY_MAX_MS = 5_000
_DUPLICATE_DELAY_MS = 3_000
_SESSION_MS = 1_800_000
_PROPENSITY_BETA = (2.0, 16.0)  # mean ≈ 0.11 purchases per click


@dataclass(frozen=True)
class SimConfig:
    """What to simulate; every field has a sensible default.

    ``rate`` is items per second (all kinds). Scenarios: ``steady``; ``ctr-drop``
    (from mid-run the first campaign's CTR falls to 20 %); ``surge`` (the middle third
    has 3× the traffic and the second campaign's CTR doubles during it). ``start_ms``
    is the epoch time of simulated time 0 (fixed by default so runs are reproducible;
    ``run_simulation`` sets it to now). The extra shares (anonymous users, trackers
    sending ``sent_at``, RFC 3339 times, skewed device clocks) are per user.
    """

    rate: float = 200.0
    duration_s: float = 60.0
    campaigns: int = 5
    variants: int = 2
    users: int = 2000
    scenario: str = "steady"
    seed: int = 42
    duplicate_share: float = 0.01
    late_share: float = 0.002
    malformed_share: float = 0.002
    start_ms: int = DEFAULT_START_MS
    consent_share: float = 0.7
    anonymous_share: float = 0.2
    sent_at_share: float = 0.5
    rfc3339_share: float = 0.1
    skew_share: float = 0.2
    #: share of clicks followed by an add_to_cart of the same campaign (0: none)
    cart_share: float = 0.0
    #: products in the catalog: views, clicks and carts carry an ``item_id`` and
    #: purchases their ``items`` (0: no items). Each user walks the catalog as a
    #: :class:`~stream.core.browsing.BrowseSim` shopper does (preferred categories,
    #: sequential successors, re-visits within a 30 min session); item draws use their
    #: own random stream, so traffic is the same with or without items.
    catalog: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.scenario not in SCENARIOS:
            problems.append(
                f"scenario {self.scenario!r} is unknown; use one of {', '.join(SCENARIOS)}"
            )
        if not self.rate > 0:
            problems.append(f"rate must be > 0 events/s, got {self.rate}")
        if not self.duration_s > 0:
            problems.append(f"duration_s must be > 0, got {self.duration_s}")
        if not 1 <= self.campaigns <= 999:
            problems.append(f"campaigns must be 1..999, got {self.campaigns}")
        if not 1 <= self.variants <= 26:
            problems.append(f"variants must be 1..26 (A..Z), got {self.variants}")
        if not 1 <= self.users <= 99_999_999:
            problems.append(f"users must be 1..99999999, got {self.users}")
        if not 0 <= self.catalog <= 10_000_000:
            problems.append(f"catalog must be 0..10000000 products, got {self.catalog}")
        if self.start_ms < 0:
            problems.append(f"start_ms must be epoch milliseconds >= 0, got {self.start_ms}")
        for name in (
            "duplicate_share",
            "late_share",
            "malformed_share",
            "consent_share",
            "anonymous_share",
            "sent_at_share",
            "rfc3339_share",
            "skew_share",
            "cart_share",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                problems.append(f"{name} must be a share between 0 and 1, got {value}")
        if self.duplicate_share + self.late_share + self.malformed_share >= 0.5:
            problems.append("duplicate_share + late_share + malformed_share must stay below 0.5")
        if problems:
            raise ValueError("invalid simulation config: " + "; ".join(problems))

    @property
    def duration_ms(self) -> int:
        return round(self.duration_s * 1000)

    def rate_multiplier(self, t_ms: float) -> float:
        """Traffic multiplier at simulated time ``t_ms`` (3 in the surge's middle third)."""
        if self.scenario == "surge":
            third = self.duration_ms / 3
            if third <= t_ms < 2 * third:
                return 3.0
        return 1.0

    def expected_items(self) -> int:
        """About how many items the run produces (``rate × duration``, surge included)."""
        factor = 5 / 3 if self.scenario == "surge" else 1.0
        return round(self.rate * self.duration_s * factor)


@dataclass(frozen=True)
class CampaignTruth:
    """The hidden parameters of one simulated campaign."""

    campaign_id: str
    weight: float  # share of views
    ctr: dict[str, float]  # true CTR per variant (before channel, user and scenario factors)
    best_variant: str
    purchase_factor: float  # multiplies user propensity


class SimItem(NamedTuple):
    """One thing to send: ``value`` is the exact bytes (an event or malformed input).

    ``reason`` is the DLQ reason Pulse should give it (``None`` for good events and
    duplicates, ``"late"`` for late events); ``event`` is ``None`` for malformed items.
    """

    key: bytes | None
    value: bytes
    kind: str
    event: dict[str, Any] | None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class SimBatch:
    """Items due at ``at_ms`` milliseconds of simulated time after ``start_ms``."""

    at_ms: int
    items: list[SimItem]


@dataclass
class SimTruth:
    """Ground truth of a run, filled while :meth:`Simulator.batches` is consumed.

    ``counts`` holds items of kind ``valid`` per (campaign_id, variant_id, type): a
    purchase is counted under the campaign that caused it even when its event omits
    ``campaign_id`` (``purchases_without_campaign`` counts those).
    """

    scenario: str
    designated_campaign: str | None
    change_window_ms: tuple[int, int] | None  # relative to start_ms
    campaigns: dict[str, CampaignTruth]
    propensity: dict[str, float]  # user key (user_id or anonymous_id) -> purchase propensity
    consent: dict[str, bool]  # user key -> marketing consent (anonymous users: False)
    kinds: Counter[str] = field(default_factory=Counter)
    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    late_counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    revenue: dict[tuple[str, str], float] = field(default_factory=dict)
    malformed_reasons: Counter[str] = field(default_factory=Counter)
    purchases_without_campaign: int = 0
    #: click event_id -> its true purchase probability (user propensity × campaign factor);
    #: filled only by ``Simulator(cfg, click_truth=True)``
    click_propensity: dict[str, float] = field(default_factory=dict)

    @property
    def drop_start_ms(self) -> int | None:
        """Simulated ms (after ``start_ms``) when the ``ctr-drop`` collapse begins."""
        return self.change_window_ms[0] if self.drop_campaign and self.change_window_ms else None

    def best_variant(self, campaign_id: str) -> str:
        """The variant with the highest true CTR of a campaign."""
        return self.campaigns[campaign_id].best_variant

    @property
    def drop_campaign(self) -> str | None:
        """The campaign whose CTR collapses in the ``ctr-drop`` scenario."""
        return self.designated_campaign if self.scenario == "ctr-drop" else None

    @property
    def total(self) -> int:
        return sum(self.kinds.values())

    def ctr(self, campaign_id: str, variant_id: str | None = None) -> float:
        """Observed CTR of the valid items sent so far (all variants when none given)."""
        views = clicks = 0
        for (cid, vid, typ), n in self.counts.items():
            if cid == campaign_id and (variant_id is None or vid == variant_id):
                if typ == "view":
                    views += n
                elif typ == "click":
                    clicks += n
        return clicks / views if views else 0.0


class _User:
    __slots__ = (
        "affinity",
        "consent",
        "context",
        "id_field",
        "key",
        "key_bytes",
        "propensity",
        "rfc",
        "salt",
        "sends_sent_at",
        "skew_ms",
    )

    def __init__(self, **kw: Any) -> None:
        for name, value in kw.items():
            setattr(self, name, value)

    key: str
    key_bytes: bytes
    id_field: str
    propensity: float
    affinity: float
    consent: dict[str, bool] | None
    sends_sent_at: bool
    skew_ms: int
    rfc: bool
    salt: int
    context: dict[str, Any]


def rfc3339(ms: int) -> str:
    """Epoch milliseconds as an RFC 3339 UTC string.

    >>> rfc3339(1_704_067_200_250)
    '2024-01-01T00:00:00.250Z'
    """
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


# heap entry: (emit_ms, seq, kind, event, key_bytes, truth_key, value, reason)
_Entry = tuple[int, int, str, Any, bytes | None, Any, bytes | None, str | None]


class Simulator:
    """Generate the traffic described by a :class:`SimConfig`.

    Campaigns, variants and users (the hidden truth) are drawn in ``__init__``;
    :meth:`batches` can be iterated more than once and yields identical batches.
    """

    def __init__(self, cfg: SimConfig, *, click_truth: bool = False) -> None:
        """``click_truth`` fills :attr:`SimTruth.click_propensity` (one entry per click)."""
        self.cfg = cfg
        self.click_truth = click_truth
        #: per user, their walk through the catalog so far: [preferred categories, session,
        #: the session's items, last item] (:meth:`next_items` reads it)
        self.walks: dict[str, list[Any]] = {}
        self.catalog = Catalog(cfg.catalog, min(20, cfg.catalog)) if cfg.catalog else None
        rng = random.Random(cfg.seed)
        self._run = _base36(cfg.start_ms)
        self.campaigns = self._make_campaigns(rng)
        self._users = self._make_users(rng)
        designated: str | None = None
        window: tuple[int, int] | None = None
        if cfg.scenario == "ctr-drop":
            designated = self.campaigns[0].campaign_id
            window = (cfg.duration_ms // 2, cfg.duration_ms)
        elif cfg.scenario == "surge":
            designated = self.campaigns[1 if len(self.campaigns) > 1 else 0].campaign_id
            window = (cfg.duration_ms // 3, 2 * cfg.duration_ms // 3)
        self._designated_idx = next(
            (i for i, c in enumerate(self.campaigns) if c.campaign_id == designated), -1
        )
        self._window = window or (0, 0)
        self._truth_template = (designated, window)
        self.truth = self._new_truth()
        self.view_rate = self._calibrate_view_rate()

    # -- setup ---------------------------------------------------------------------------

    def _make_campaigns(self, rng: random.Random) -> list[CampaignTruth]:
        out = []
        names = [chr(ord("A") + i) for i in range(self.cfg.variants)]
        for i in range(self.cfg.campaigns):
            base = rng.uniform(0.02, 0.06)
            best = names[rng.randrange(len(names))]
            ctr = {}
            for name in names:
                lift = 1.0 if name == best or len(names) == 1 else rng.uniform(0.55, 0.85)
                ctr[name] = round(base * lift, 5)
            out.append(
                CampaignTruth(
                    campaign_id=f"cmp-{i + 1:03d}",
                    weight=rng.uniform(0.5, 2.0),
                    ctr=ctr,
                    best_variant=best,
                    purchase_factor=round(rng.uniform(0.6, 1.4), 4),
                )
            )
        total = sum(c.weight for c in out)
        return [
            CampaignTruth(c.campaign_id, c.weight / total, c.ctr, c.best_variant, c.purchase_factor)
            for c in out
        ]

    def _make_users(self, rng: random.Random) -> list[_User]:
        cfg = self.cfg
        a, b = _PROPENSITY_BETA
        mean_prop = a / (a + b)
        users = []
        for i in range(cfg.users):
            propensity = rng.betavariate(a, b)
            anonymous = rng.random() < cfg.anonymous_share
            if anonymous:
                key, id_field = f"anon-{rng.getrandbits(48):012x}", "anonymous_id"
                consent = None
            else:
                key, id_field = f"u-{i + 1:05d}", "user_id"
                consent = {"marketing": rng.random() < cfg.consent_share}
            sends = rng.random() < cfg.sent_at_share
            skew = 0
            if sends and rng.random() < cfg.skew_share:
                skew = rng.choice((-1, 1)) * rng.randint(2_000, 120_000)
            agent = rng.randrange(len(_AGENTS))
            locale = _LOCALES[rng.randrange(len(_LOCALES))]
            context: dict[str, Any] = {
                "locale": locale,
                "timezone": _TIMEZONES[locale],
                "user_agent": _AGENTS[agent],
            }
            if agent < 4:
                context["ip"] = f"203.0.113.{rng.randrange(1, 255)}"
            users.append(
                _User(
                    key=key,
                    key_bytes=key.encode(),
                    id_field=id_field,
                    propensity=round(propensity, 5),
                    affinity=0.6 + 0.4 * propensity / mean_prop,
                    consent=consent,
                    sends_sent_at=sends,
                    skew_ms=skew,
                    rfc=rng.random() < cfg.rfc3339_share,
                    salt=rng.getrandbits(16),
                    context=context,
                )
            )
        self._user_cum = list(accumulate(rng.lognormvariate(0.0, 1.0) for _ in users))
        return users

    def _new_truth(self) -> SimTruth:
        designated, window = self._truth_template
        return SimTruth(
            scenario=self.cfg.scenario,
            designated_campaign=designated,
            change_window_ms=window,
            campaigns={c.campaign_id: c for c in self.campaigns},
            propensity={u.key: u.propensity for u in self._users},
            consent={u.key: bool(u.consent and u.consent["marketing"]) for u in self._users},
        )

    def _calibrate_view_rate(self) -> float:
        """Views per second so that all items together arrive at about ``cfg.rate``."""
        cfg = self.cfg
        ctr = sum(c.weight * sum(c.ctr.values()) / len(c.ctr) for c in self.campaigns)
        a, b = _PROPENSITY_BETA
        factor = sum(c.weight * c.purchase_factor for c in self.campaigns)
        p_buy = a / (a + b) * factor * 1.1  # clickers lean to higher propensity
        d = cfg.duration_ms
        click_kept = max(0.0, 1.0 - sum(_CLICK_DELAY_MS) / 2 / d)
        # share of clicks whose purchase (30 s + exponential) still falls inside the run
        m, lo = _PURCHASE_MEAN_EXTRA_MS, _PURCHASE_MIN_MS
        span = max(0.0, d - lo)
        buy_kept = (span - m * (1 - math.exp(-span / m))) / d if span else 0.0
        per_view = 1.0 + ctr * click_kept * (1.0 + p_buy * buy_kept)
        extras = cfg.duplicate_share + cfg.late_share + cfg.malformed_share
        return cfg.rate * (1.0 - extras) / per_view

    # -- generation ----------------------------------------------------------------------

    def batches(self, batch_ms: int = 100) -> Iterator[SimBatch]:
        """Yield one batch per ``batch_ms`` of simulated time, in time order.

        Resets :attr:`truth` and counts every yielded item into it.
        """
        if batch_ms <= 0:
            raise ValueError(f"batch_ms must be > 0, got {batch_ms}")
        cfg = self.cfg
        rng = random.Random(f"{cfg.seed}/traffic")
        rand = rng.random
        # items and carts draw from their own stream: with neither, traffic is unchanged
        item_rng = random.Random(f"{cfg.seed}/items")
        cart_share = cfg.cart_share
        shop = self.catalog
        # user -> [preferred categories, session (30 min bucket), session's items, last item]
        walks = self.walks = {}
        cart_lo, cart_hi = _CART_DELAY_MS
        expo = rng.expovariate
        self.truth = truth = self._new_truth()
        click_propensity = truth.click_propensity if self.click_truth else None
        kinds, counts, late_counts, revenue = (
            truth.kinds,
            truth.counts,
            truth.late_counts,
            truth.revenue,
        )
        heap: list[_Entry] = []
        push, pop = heapq.heappush, heapq.heappop
        dumps = orjson.dumps
        seq = 0
        carry_views = carry_late = carry_bad = 0.0
        extras = cfg.duplicate_share + cfg.late_share + cfg.malformed_share
        p_dup = cfg.duplicate_share / (1.0 - extras)
        view_rate = self.view_rate
        start = cfg.start_ms
        duration = cfg.duration_ms
        run_prefix = f"{cfg.seed}-{self._run}-"
        n_id = 0

        users = self._users
        user_cum = self._user_cum
        user_total = user_cum[-1]
        camps = self.campaigns
        camp_cum = list(accumulate(c.weight for c in camps))
        camp_ids = [c.campaign_id for c in camps]
        variant_names = [list(c.ctr) for c in camps]
        variant_ctr = [list(c.ctr.values()) for c in camps]
        factors = [c.purchase_factor for c in camps]
        chan_cum = list(accumulate(_CHANNEL_WEIGHTS))
        cur_cum = list(accumulate(_CURRENCY_WEIGHTS))
        n_var = cfg.variants
        scenario = cfg.scenario
        designated = self._designated_idx
        w_lo, w_hi = self._window
        ctr_mult = 0.2 if scenario == "ctr-drop" else 2.0 if scenario == "surge" else 1.0
        click_lo, click_hi = _CLICK_DELAY_MS

        def pick_user() -> _User:
            return users[min(bisect_right(user_cum, rand() * user_total), len(users) - 1)]

        def send_delay() -> int:
            return min(int(expo(1.0 / _SEND_DELAY_MEAN_MS)), _SEND_DELAY_MAX_MS)

        def make_event(
            etype: str, t: int, emit: int, user: _User, c: int, var: str, chan: int
        ) -> dict[str, Any]:
            nonlocal n_id
            n_id += 1
            ev: dict[str, Any] = {"event_id": run_prefix + str(n_id), "type": etype}
            device_t = start + t + user.skew_ms
            ev["event_time"] = rfc3339(device_t) if user.rfc else device_t
            if user.sends_sent_at:
                sent = start + emit + user.skew_ms
                ev["sent_at"] = rfc3339(sent) if user.rfc else sent
            ev[user.id_field] = user.key
            if c >= 0:
                ev["campaign_id"] = camp_ids[c]
                ev["variant_id"] = var
            channel = CHANNELS[chan]
            ev["channel"] = channel
            ev["session_id"] = f"s-{user.key}-{(start + t) // _SESSION_MS}"
            if user.consent is not None:
                ev["consent"] = user.consent
            if c >= 0 and chan in (2, 3):  # email and social links carry UTM parameters
                ev["context"] = {
                    **user.context,
                    "utm": {"source": channel, "medium": channel, "campaign": camp_ids[c]},
                }
            else:
                ev["context"] = user.context
            return ev

        at = 0
        while at < duration:
            t0 = at
            at = min(at + batch_ms, duration)
            span = at - t0
            mult = cfg.rate_multiplier(t0)
            # fresh views inside (t0, at]
            carry_views += view_rate * mult * span / 1000.0
            n_views = int(carry_views)
            carry_views -= n_views
            for _ in range(n_views):
                t = t0 + int(rand() * span)
                user = pick_user()
                c = min(bisect_right(camp_cum, rand() * camp_cum[-1]), len(camps) - 1)
                vi = (user.salt + c) % n_var
                var = variant_names[c][vi]
                chan = min(bisect_right(chan_cum, rand() * chan_cum[-1]), len(CHANNELS) - 1)
                emit = t + send_delay()
                ev = make_event("view", t, emit, user, c, var, chan)
                item = None
                if shop is not None:  # the user's walk through the catalog (browsing.py)
                    walk = walks.get(user.key)
                    if walk is None:
                        walk = walks[user.key] = [shop.prefs(item_rng), -1, [], 0]
                    bucket = (start + t) // _SESSION_MS
                    if walk[1] != bucket:
                        walk[1], walk[2] = bucket, []
                        idx = shop.start(item_rng, walk[0])
                    else:
                        idx = shop.next(item_rng, walk[0], walk[2], walk[3])
                    walk[2].append(idx)
                    walk[3] = idx
                    item = ev["item_id"] = shop.item_id(idx)
                seq += 1
                push(heap, (emit, seq, "valid", ev, user.key_bytes, (c, var, 0), None, None))
                p_click = variant_ctr[c][vi] * CHANNEL_CTR[chan] * user.affinity
                if c == designated and w_lo <= t < w_hi:
                    p_click *= ctr_mult
                if rand() >= p_click:
                    continue
                ct = t + click_lo + int((click_hi - click_lo) * rand() ** 2)
                if ct >= duration:
                    continue
                cemit = ct + send_delay()
                cev = make_event("click", ct, cemit, user, c, var, chan)
                if item is not None:
                    cev["item_id"] = item
                seq += 1
                push(heap, (cemit, seq, "valid", cev, user.key_bytes, (c, var, 1), None, None))
                if cart_share and item_rng.random() < cart_share:
                    at_t = ct + item_rng.randint(cart_lo, cart_hi)
                    if at_t < duration:
                        delay = item_rng.expovariate(1.0 / _SEND_DELAY_MEAN_MS)
                        aemit = at_t + min(int(delay), _SEND_DELAY_MAX_MS)
                        aev = make_event("add_to_cart", at_t, aemit, user, c, var, chan)
                        if item is not None:
                            aev["item_id"] = item
                        seq += 1
                        akey = (c, var, 4)
                        push(heap, (aemit, seq, "valid", aev, user.key_bytes, akey, None, None))
                p_buy = min(0.95, user.propensity * factors[c])
                if click_propensity is not None:
                    click_propensity[cev["event_id"]] = p_buy
                if rand() >= p_buy:
                    continue
                pt = ct + min(
                    _PURCHASE_MIN_MS + int(expo(1.0 / _PURCHASE_MEAN_EXTRA_MS)), _PURCHASE_MAX_MS
                )
                if pt >= duration:
                    continue
                pemit = pt + send_delay()
                with_campaign = rand() < 0.7
                pev = make_event("purchase", pt, pemit, user, c if with_campaign else -1, var, chan)
                pev["order_id"] = "o-" + pev["event_id"]
                pev["revenue"] = round(rng.lognormvariate(3.7, 0.7), 2)
                pev["currency"] = _CURRENCIES[
                    min(bisect_right(cur_cum, rand() * cur_cum[-1]), len(_CURRENCIES) - 1)
                ]
                pev["properties"] = {"items": 1 + int(expo(0.8))}
                if item is not None:
                    pev["items"] = [{"item_id": item, "quantity": 1, "price": pev["revenue"]}]
                seq += 1
                truth_key = (c, var, 2 if with_campaign else 3)
                push(heap, (pemit, seq, "valid", pev, user.key_bytes, truth_key, None, None))

            # late events: queued on an offline device, event time 10-30 min ago
            carry_late += cfg.late_share * cfg.rate * mult * span / 1000.0
            while carry_late >= 1.0:
                carry_late -= 1.0
                emit = t0 + int(rand() * span)
                user = pick_user()
                c = min(bisect_right(camp_cum, rand() * camp_cum[-1]), len(camps) - 1)
                var = variant_names[c][(user.salt + c) % n_var]
                chan = min(bisect_right(chan_cum, rand() * chan_cum[-1]), len(CHANNELS) - 1)
                t = max(-start, emit - rng.randint(*_LATE_MS))
                etype = "view" if rand() < 0.8 else "click"
                ev = make_event(etype, t, emit, user, c, var, chan)
                tk = (c, var, 0 if etype == "view" else 1)
                seq += 1
                push(heap, (emit, seq, "late", ev, user.key_bytes, tk, None, "late"))

            carry_bad += cfg.malformed_share * cfg.rate * mult * span / 1000.0
            while carry_bad >= 1.0:
                carry_bad -= 1.0
                emit = t0 + int(rand() * span)
                user = pick_user()
                reason = _MALFORMED_REASONS[
                    rng.choices(range(len(_MALFORMED_REASONS)), _MALFORMED_WEIGHTS)[0]
                ]
                n_id += 1
                value = _malformed(rng, reason, run_prefix + str(n_id), start + emit, user.key)
                seq += 1
                push(heap, (emit, seq, "malformed", None, user.key_bytes, None, value, reason))

            items: list[SimItem] = []
            append = items.append
            while heap and heap[0][0] <= at:
                emit, _, kind, ev, key, tk, raw, why = pop(heap)
                if raw is None:
                    raw = dumps(ev)
                append(SimItem(key, raw, kind, ev, why))
                kinds[kind] += 1
                if kind == "valid":
                    c, var, typ = tk
                    cid = camp_ids[c]
                    if typ == 4:
                        counts[(cid, var, "add_to_cart")] += 1
                    elif typ >= 2:
                        counts[(cid, var, "purchase")] += 1
                        revenue[(cid, var)] = revenue.get((cid, var), 0.0) + ev["revenue"]
                        if typ == 3:
                            truth.purchases_without_campaign += 1
                    else:
                        counts[(cid, var, "view" if typ == 0 else "click")] += 1
                    if rand() < p_dup:
                        d_emit = emit + int(rand() * _DUPLICATE_DELAY_MS)
                        if d_emit < duration:
                            seq += 1
                            push(heap, (d_emit, seq, "duplicate", ev, key, None, raw, None))
                elif kind == "late":
                    c, var, typ = tk
                    late_counts[(camp_ids[c], var, "view" if typ == 0 else "click")] += 1
                elif kind == "malformed":
                    truth.malformed_reasons[why or ""] += 1
            yield SimBatch(at, items)

    def next_items(self, user: str, k: int = 5) -> list[str]:
        """The ``k`` items ``user`` most likely views next after the run (the truth)."""
        prefs, _, session, last = self.walks[user]
        assert self.catalog is not None, "next_items needs a catalog (SimConfig.catalog)"
        truth = self.catalog.truth(prefs, session, last)
        return sorted(truth, key=lambda i: (-truth[i], i))[:k]

    def expected_items(self) -> int:
        """About how many items :meth:`batches` yields (for progress bars)."""
        return self.cfg.expected_items()


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out


def _malformed(rng: random.Random, reason: str, event_id: str, now_ms: int, user: str) -> bytes:
    """Bytes that Pulse must send to the DLQ with ``reason``."""
    good: dict[str, Any] = {
        "event_id": event_id,
        "type": "view",
        "event_time": now_ms,
        "user_id": user,
        "campaign_id": "cmp-001",
    }
    if reason == "invalid_json":
        raw = orjson.dumps(good)
        return rng.choice(
            (
                raw[: rng.randrange(1, len(raw) - 1)],  # truncated
                raw.replace(b'"', b"'"),  # single quotes
                b"type=view&user=" + user.encode(),
                b"\xff\xfe\x00garbage",
                b"{}}",
            )
        )
    if reason == "not_object":
        return rng.choice((orjson.dumps([good]), b"[1,2,3]", b'"view"', b"42", b"null"))
    if reason == "too_large":
        good["properties"] = {"blob": "x" * 40_000}
        return orjson.dumps(good)
    broken = dict(good)
    kind = rng.randrange(7)
    if kind == 0:
        del broken["type"]
    elif kind == 1:
        broken.update(type="purchase", revenue=-round(rng.uniform(1, 100), 2), currency="EUR")
        del broken["campaign_id"]
    elif kind == 2:
        broken["type"] = "hover"
    elif kind == 3:
        del broken["campaign_id"]
    elif kind == 4:
        del broken["user_id"]
    elif kind == 5:
        broken["event_time"] = "yesterday"
    else:
        broken["event_id"] = "e" * 80
    return orjson.dumps(broken)
