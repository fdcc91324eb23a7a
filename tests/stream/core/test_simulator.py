"""The simulator: deterministic, realistic funnel, scenarios and anomalies (no broker)."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections import Counter, defaultdict
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.core.simulator import SimConfig, SimItem, Simulator, rfc3339
from stream.core.validation import check_event

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "schemas" / "event.schema.json"
TOP_LEVEL_FIELDS = {
    "event_id",
    "type",
    "event_time",
    "sent_at",
    "user_id",
    "anonymous_id",
    "campaign_id",
    "variant_id",
    "channel",
    "session_id",
    "order_id",
    "revenue",
    "currency",
    "consent",
    "context",
    "properties",
}
CHANNELS = {"web", "mobile", "email", "sms", "social", "search", "display"}


def items_of(cfg: SimConfig, batch_ms: int = 100) -> list[SimItem]:
    return [item for batch in Simulator(cfg).batches(batch_ms) for item in batch.items]


@cache
def run(cfg: SimConfig) -> tuple[Simulator, list[tuple[int, SimItem]]]:
    """(simulator, [(batch at_ms, item)]) for a config, computed once per test session."""
    sim = Simulator(cfg)
    out = [(batch.at_ms, item) for batch in sim.batches() for item in batch.items]
    return sim, out


def to_ms(value: int | str) -> int:
    if isinstance(value, int):
        return value
    parsed = dt.datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return int(parsed.timestamp() * 1000)


def true_ms(at: int, ev: dict[str, Any], cfg: SimConfig) -> int:
    """Event time corrected for device clock skew as Pulse does (batch time = receipt)."""
    t = to_ms(ev["event_time"])
    if "sent_at" in ev:
        return cfg.start_ms + at - (to_ms(ev["sent_at"]) - t)
    return t


def contract_problems(ev: Any) -> list[str]:
    """The PRODUCT.md event table, checked by hand (independent of the schema file)."""
    if not isinstance(ev, dict):
        return ["not an object"]
    problems = []
    eid = ev.get("event_id")
    if not (isinstance(eid, str) and 1 <= len(eid) <= 64):
        problems.append("event_id")
    if ev.get("type") not in ("view", "click", "purchase"):
        problems.append("type")
    for name in ("event_time", "sent_at"):
        if name not in ev and name == "sent_at":
            continue
        value = ev.get(name)
        try:
            ok = (isinstance(value, int) and value >= 0) or (
                isinstance(value, str) and to_ms(value) >= 0
            )
        except (ValueError, AssertionError):
            ok = False
        if not ok:
            problems.append(name)
    if not (ev.get("user_id") or ev.get("anonymous_id")):
        problems.append("user_id/anonymous_id")
    if ev.get("type") in ("view", "click") and not ev.get("campaign_id"):
        problems.append("campaign_id")
    if ev.get("type") == "purchase":
        revenue = ev.get("revenue")
        if not (isinstance(revenue, int | float) and revenue >= 0):
            problems.append("revenue")
        currency = ev.get("currency")
        if not (isinstance(currency, str) and len(currency) == 3 and currency.isalpha()):
            problems.append("currency")
    if ev.get("channel", "web") not in CHANNELS:
        problems.append("channel")
    if "consent" in ev and not isinstance(ev["consent"].get("marketing"), bool):
        problems.append("consent")
    extra = set(ev) - TOP_LEVEL_FIELDS
    if extra:
        problems.append(f"unknown fields {sorted(extra)}")
    return problems


# -- determinism --------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes() -> None:
    cfg = SimConfig(rate=400, duration_s=10, seed=3)
    a = Simulator(cfg)
    first = [(b.at_ms, [(i.key, i.value, i.kind) for i in b.items]) for b in a.batches()]
    again = [(b.at_ms, [(i.key, i.value, i.kind) for i in b.items]) for b in a.batches()]
    other = [
        (b.at_ms, [(i.key, i.value, i.kind) for i in b.items]) for b in Simulator(cfg).batches()
    ]
    assert first == again == other
    assert a.truth.propensity == Simulator(cfg).truth.propensity


def test_other_seed_gives_other_traffic() -> None:
    a = [i.value for i in items_of(SimConfig(rate=400, duration_s=5, seed=1))]
    b = [i.value for i in items_of(SimConfig(rate=400, duration_s=5, seed=2))]
    assert a != b
    assert Simulator(SimConfig(seed=1)).campaigns != Simulator(SimConfig(seed=2)).campaigns


def test_event_ids_unique_and_distinct_between_runs() -> None:
    items = items_of(SimConfig(rate=1000, duration_s=10))
    ids = [i.event["event_id"] for i in items if i.kind in ("valid", "late") and i.event]
    assert len(ids) == len(set(ids))
    later = items_of(SimConfig(rate=1000, duration_s=10, start_ms=1_800_000_000_000))
    later_ids = {i.event["event_id"] for i in later if i.event}
    assert not set(ids) & later_ids  # a second live run is not deduplicated away


def test_config_errors_are_explained() -> None:
    with pytest.raises(ValueError, match="scenario 'boom' is unknown"):
        SimConfig(scenario="boom")
    with pytest.raises(ValueError, match="rate must be > 0"):
        SimConfig(rate=0)
    with pytest.raises(ValueError, match="batch_ms"):
        next(Simulator(SimConfig(duration_s=1)).batches(0))


# -- volume and shares --------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "duration_s"), [(200, 60), (2000, 20), (50, 300)])
def test_item_count_is_rate_times_duration(rate: float, duration_s: float) -> None:
    n = len(items_of(SimConfig(rate=rate, duration_s=duration_s)))
    assert n == pytest.approx(rate * duration_s, rel=0.05)


def test_batches_are_regular_and_cover_the_run() -> None:
    cfg = SimConfig(rate=300, duration_s=2.05)
    ats = [b.at_ms for b in Simulator(cfg).batches(batch_ms=100)]
    assert ats[0] == 100 and ats[-1] == 2050 and len(ats) == 21
    assert all(b > a for a, b in itertools.pairwise(ats))


def test_kind_shares_and_truth_counts() -> None:
    cfg = SimConfig(rate=1000, duration_s=60)
    sim, stamped = run(cfg)
    items = [i for _, i in stamped]
    kinds = Counter(i.kind for i in items)
    total = len(items)
    assert kinds["duplicate"] / total == pytest.approx(0.01, rel=0.15)
    assert kinds["late"] / total == pytest.approx(0.002, rel=0.1)
    assert kinds["malformed"] / total == pytest.approx(0.002, rel=0.1)
    assert sim.truth.kinds == kinds
    valid = [i for i in items if i.kind == "valid"]
    assert sum(sim.truth.counts.values()) == len(valid)
    types = Counter(i.event["type"] for i in valid if i.event)
    assert 0.015 < types["click"] / types["view"] < 0.08  # CTR 2-6 % with channel mix
    assert set(Counter(i.reason for i in items if i.kind == "malformed")) == {
        "invalid_json",
        "not_object",
        "schema",
        "too_large",
    }


def test_traffic_features_present() -> None:
    _, stamped = run(SimConfig(rate=1000, duration_s=60))
    events = [i.event for _, i in stamped if i.kind == "valid" and i.event]
    n = len(events)
    with_sent_at = sum("sent_at" in e for e in events) / n
    as_text = sum(isinstance(e["event_time"], str) for e in events) / n
    anonymous = sum("user_id" not in e for e in events) / n
    assert 0.3 < with_sent_at < 0.7
    assert 0.02 < as_text < 0.3
    assert 0.05 < anonymous < 0.4
    channels = Counter(e["channel"] for e in events)
    assert set(channels) == {"web", "mobile", "email", "social", "search", "display"}
    assert channels["web"] > channels["display"]
    assert {e["variant_id"] for e in events if "variant_id" in e} == {"A", "B"}


# -- contract -----------------------------------------------------------------------------


def test_valid_items_follow_the_event_contract() -> None:
    _, stamped = run(SimConfig(rate=1000, duration_s=60))
    for _, item in stamped:
        if item.kind == "malformed":
            continue
        assert item.event is not None
        assert orjson.loads(item.value) == item.event
        assert contract_problems(item.event) == [], item.value
        key = item.event.get("user_id") or item.event["anonymous_id"]
        assert item.key == key.encode()
        assert len(item.value) <= 32 * 1024


def test_valid_items_pass_the_json_schema() -> None:
    fastjsonschema = pytest.importorskip("fastjsonschema")
    if not SCHEMA_PATH.exists():
        pytest.skip("schemas/event.schema.json not present")
    validate = fastjsonschema.compile(json.loads(SCHEMA_PATH.read_text()))
    _, stamped = run(SimConfig(rate=1000, duration_s=60))
    for _, item in stamped:
        if item.kind != "malformed":
            validate(item.event)


def test_malformed_items_are_not_valid_events() -> None:
    _, stamped = run(SimConfig(rate=1000, duration_s=60))
    bad = [i for _, i in stamped if i.kind == "malformed"]
    assert bad
    for item in bad:
        assert item.event is None
        try:
            parsed = orjson.loads(item.value)
        except orjson.JSONDecodeError:
            assert item.reason == "invalid_json"
            continue
        if item.reason == "too_large":
            assert len(item.value) > 32 * 1024
        elif item.reason == "not_object":
            assert not isinstance(parsed, dict)
        else:
            assert item.reason == "schema"
            assert contract_problems(parsed), item.value


def test_duplicates_repeat_earlier_bytes() -> None:
    _, stamped = run(SimConfig(rate=1000, duration_s=60))
    seen: set[bytes] = set()
    dups = 0
    for _, item in stamped:
        if item.kind == "duplicate":
            assert item.value in seen
            dups += 1
        elif item.kind == "valid":
            seen.add(item.value)
    assert dups > 0


def test_late_events_are_10_to_30_minutes_old() -> None:
    cfg = SimConfig(rate=1000, duration_s=60)
    _, stamped = run(cfg)
    late = [(at, i) for at, i in stamped if i.kind == "late"]
    assert late
    for at, item in late:
        assert item.reason == "late" and item.event is not None
        age_s = (cfg.start_ms + at - true_ms(at, item.event, cfg)) / 1000
        assert 600 <= age_s <= 1800.1


# -- funnel -------------------------------------------------------------------------------


def test_clicks_follow_views_and_purchases_follow_clicks() -> None:
    sim, stamped = run(SimConfig(rate=100, duration_s=900, seed=5))
    views: dict[tuple[str, str], list[int]] = defaultdict(list)
    clicks: dict[tuple[str, str], list[int]] = defaultdict(list)
    user_clicks: dict[str, list[int]] = defaultdict(list)
    purchases: list[tuple[str, str | None, int]] = []
    for _, item in stamped:
        ev = item.event
        if item.kind != "valid" or ev is None:
            continue
        user = ev.get("user_id") or ev["anonymous_id"]
        t = to_ms(ev["event_time"])
        if ev["type"] == "view":
            views[(user, ev["campaign_id"])].append(t)
        elif ev["type"] == "click":
            clicks[(user, ev["campaign_id"])].append(t)
            user_clicks[user].append(t)
        else:
            purchases.append((user, ev.get("campaign_id"), t))
    for (user, campaign), times in clicks.items():
        for t in times:
            assert any(1_000 <= t - v <= 20_000 for v in views[(user, campaign)])
    assert len(purchases) > 50
    without = 0
    for buyer, bought_from, when in purchases:
        candidates = clicks[(buyer, bought_from)] if bought_from else user_clicks[buyer]
        without += bought_from is None
        assert any(30_000 <= when - c <= 1_800_000 for c in candidates), (buyer, bought_from)
    assert 0.15 < without / len(purchases) < 0.45
    assert without == sim.truth.purchases_without_campaign


def test_purchases_favour_high_propensity_users() -> None:
    sim, stamped = run(SimConfig(rate=100, duration_s=900, seed=5))
    buyers = Counter(
        i.event.get("user_id") or i.event["anonymous_id"]
        for _, i in stamped
        if i.kind == "valid" and i.event and i.event["type"] == "purchase"
    )
    prop = sim.truth.propensity
    mean_all = sum(prop.values()) / len(prop)
    mean_buyers = sum(prop[u] * n for u, n in buyers.items()) / sum(buyers.values())
    assert mean_buyers > 1.3 * mean_all
    currencies = Counter(
        i.event["currency"]
        for _, i in stamped
        if i.kind == "valid" and i.event and "currency" in i.event
    )
    assert {"EUR", "usd"} <= set(currencies) and currencies.most_common(1)[0][0] == "EUR"
    revenue = [i.event["revenue"] for _, i in stamped if i.event and "revenue" in i.event]
    assert min(revenue) > 0 and max(revenue) > 3 * sorted(revenue)[len(revenue) // 2]
    assert all(0 < p < 1 for p in prop.values())
    assert set(sim.truth.consent) == set(prop)


# -- scenarios ----------------------------------------------------------------------------


def ctr_in(
    stamped: list[tuple[int, SimItem]], cfg: SimConfig, campaign: str, lo: int, hi: int
) -> float:
    """Clicks / views of ``campaign`` with (skew-corrected) event time in [lo, hi) ms.

    Clicks come 1-20 s after their view, so a window from ``phase start + 21 s`` to
    the phase end holds clicks of that phase's views only (at a steady view rate).
    """
    views = clicks = 0
    for at, item in stamped:
        ev = item.event
        if item.kind != "valid" or not ev or ev.get("campaign_id") != campaign:
            continue
        t = true_ms(at, ev, cfg) - cfg.start_ms
        if lo <= t < hi:
            views += ev["type"] == "view"
            clicks += ev["type"] == "click"
    return clicks / views


def test_ctr_drop_collapses_the_designated_campaign() -> None:
    cfg = SimConfig(rate=1500, duration_s=60, scenario="ctr-drop", seed=11)
    sim, stamped = run(cfg)
    drop = sim.truth.drop_campaign
    assert drop == "cmp-001" == sim.truth.designated_campaign
    assert sim.truth.change_window_ms == (30_000, 60_000)
    first, second = (ctr_in(stamped, cfg, drop, lo, lo + 9_000) for lo in (21_000, 51_000))
    assert second < 0.45 * first
    for other in ("cmp-002", "cmp-003"):
        a, b = (ctr_in(stamped, cfg, other, lo, lo + 9_000) for lo in (21_000, 51_000))
        assert 0.6 * a < b < 1.6 * a


def test_steady_keeps_ctr() -> None:
    cfg = SimConfig(rate=1500, duration_s=60, seed=11)
    sim, stamped = run(cfg)
    assert sim.truth.drop_campaign is None and sim.truth.designated_campaign is None
    first, second = (ctr_in(stamped, cfg, "cmp-001", lo, lo + 9_000) for lo in (21_000, 51_000))
    assert 0.6 * first < second < 1.6 * first


def test_surge_triples_rate_in_the_middle_third() -> None:
    cfg = SimConfig(rate=600, duration_s=90, scenario="surge", seed=4)
    sim, stamped = run(cfg)
    thirds = Counter(min(2, (at - 1) * 3 // cfg.duration_ms) for at, _ in stamped)
    assert thirds[1] == pytest.approx(3 * thirds[0], rel=0.1)
    assert thirds[2] == pytest.approx(thirds[0], rel=0.1)
    assert len(stamped) == pytest.approx(cfg.expected_items(), rel=0.05)
    surged = sim.truth.designated_campaign
    assert surged == "cmp-002" and sim.truth.drop_campaign is None
    assert sim.truth.change_window_ms == (30_000, 60_000)
    before, during = (ctr_in(stamped, cfg, surged, lo, lo + 9_000) for lo in (21_000, 51_000))
    assert during > 1.5 * before


def test_rfc3339_helper() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"
    assert to_ms(rfc3339(1_714_564_800_250)) == 1_714_564_800_250


def test_truth_has_the_true_purchase_probability_of_every_click() -> None:
    cfg = SimConfig(rate=300, duration_s=600, seed=3, scenario="ctr-drop")
    sim = Simulator(cfg, click_truth=True)
    stamped = [(b.at_ms, i) for b in sim.batches() for i in b.items]
    clicks = [i.event for _, i in stamped if i.kind == "valid" and i.event["type"] == "click"]
    truth = sim.truth
    assert clicks and all(c["event_id"] in truth.click_propensity for c in clicks)
    factor = {cid: c.purchase_factor for cid, c in truth.campaigns.items()}
    for c in clicks[:200]:
        user = c.get("user_id") or c["anonymous_id"]
        expected = min(0.95, truth.propensity[user] * factor[c["campaign_id"]])
        assert truth.click_propensity[c["event_id"]] == expected
    assert truth.drop_start_ms == 300_000 and truth.drop_campaign == "cmp-001"
    assert all(truth.best_variant(cid) == c.best_variant for cid, c in truth.campaigns.items())
    again = Simulator(cfg, click_truth=True)
    assert [i.value for b in again.batches() for i in b.items] == [i.value for _, i in stamped]
    assert again.truth.click_propensity == truth.click_propensity
    plain, items = run(cfg)  # off by default: a long live run keeps no per-click table
    assert plain.truth.click_propensity == {} and plain.truth.counts == truth.counts
    assert [i.value for _, i in items] == [i.value for _, i in stamped]  # same bytes
    assert Simulator(SimConfig(duration_s=5)).truth.drop_start_ms is None


def test_carts_and_items_ride_on_the_same_traffic() -> None:
    cfg = dict(rate=200, duration_s=120, seed=7, duplicate_share=0.0)
    plain = Simulator(SimConfig(**cfg))
    items = Simulator(SimConfig(**cfg, cart_share=0.5, catalog=50))
    plain_events = [i.event for b in plain.batches() for i in b.items if i.kind == "valid"]
    item_events = [i.event for b in items.batches() for i in b.items if i.kind == "valid"]
    carts = [e for e in item_events if e["type"] == "add_to_cart"]
    assert carts and all(e["item_id"].startswith("sku-") and e["campaign_id"] for e in carts)
    clicks = [e for e in item_events if e["type"] == "click"]
    assert 0.35 < len(carts) / len(clicks) < 0.55  # minus carts past the end of the run
    assert all("item_id" in e for e in item_events if e["type"] != "purchase")
    bought = [e for e in item_events if e["type"] == "purchase"]
    assert bought and all(e["items"][0]["price"] == e["revenue"] for e in bought)
    rejected = [e for e in item_events if not isinstance(check_event(e, 10**12), dict)]
    assert not rejected, rejected[:3]
    counted = Counter(e["type"] for e in item_events)
    assert sum(v for (_, _, t), v in items.truth.counts.items() if t == "add_to_cart") == len(carts)
    views = sum(1 for e in plain_events if e["type"] == "view")
    assert abs(counted["view"] - views) < 0.01 * views
    assert all(e["context"]["timezone"].count("/") == 1 for e in plain_events)


def test_users_walk_the_catalog_and_a_recommender_finds_their_next_items() -> None:
    from stream.core.recommend import Recommender

    sim = Simulator(SimConfig(rate=200, duration_s=600, seed=3, users=200, catalog=200))
    rec = Recommender()
    for batch in sim.batches():
        for item in batch.items:
            if item.kind == "valid" and "item_id" in item.event:
                e = check_event(item.event, 10**13)
                assert isinstance(e, dict)
                rec.observe_event(e.get("user_id") or e["anonymous_id"], e)
    busy = sorted(sim.walks, key=lambda u: -len(sim.walks[u][2]))[:10]
    found = [len({i for i, _ in rec.recommend(u, 20)[0]} & set(sim.next_items(u, 5))) for u in busy]
    assert sum(found) / len(found) >= 3, found
