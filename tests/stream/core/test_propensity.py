"""Propensity model: delayed labels, progressive validation, offer rails — no broker."""

from __future__ import annotations

import pickle

from stream.core.propensity import PropensityModel

MIN = 60_000


def click(ts: int, user: str = "u", consent: bool | None = True, cid: str = "c") -> dict:
    e = {"type": "click", "ts": ts, "user_id": user, "campaign_id": cid, "channel": "web"}
    if consent is not None:
        e["consent"] = {"marketing": consent}
    return e


def purchase(ts: int, user: str = "u") -> dict:
    return {"type": "purchase", "ts": ts, "user_id": user, "revenue": 10.0, "channel": "web"}


def view(ts: int, user: str = "u") -> dict:
    return {"type": "view", "ts": ts, "user_id": user, "campaign_id": "c", "channel": "web"}


def test_purchase_inside_window_is_a_positive_label() -> None:
    m = PropensityModel(attribution_ms=10 * MIN, min_labels=10**9)
    m.on_event(click(0))
    m.on_event(click(MIN))
    m.on_event(purchase(2 * MIN))
    assert m.labels == 2 and not m.pending and m.logloss.get() > 0


def test_expired_click_is_a_negative_label_in_event_time() -> None:
    m = PropensityModel(attribution_ms=10 * MIN, min_labels=10**9)
    m.on_event(click(0, "a"))
    m.on_event(view(5 * MIN, "b"))
    assert m.labels == 0
    m.on_event(view(11 * MIN, "b"))  # event time passes the window of a's click
    assert m.labels == 1 and not m.pending


def test_offer_rails() -> None:
    m = PropensityModel(attribution_ms=10 * MIN, min_labels=0, min_score=0.0)
    first = m.on_event(click(0, "a"))
    assert [t["target"] for t in first.offers] == [{"user_id": "a", "campaign_id": "c"}]
    assert m.on_event(click(MIN, "a")).held == [("user_offer", "frequency_cap")]
    assert m.on_event(click(MIN, "b", consent=False)).held == [("user_offer", "consent")]
    assert m.on_event(click(MIN, "c", consent=None)).held == [("user_offer", "consent")]
    later = m.on_event(click(25 * 3600 * 1000, "a"))  # next day: allowed again
    assert len(later.offers) == 1


def test_warmup_and_threshold() -> None:
    m = PropensityModel(attribution_ms=10 * MIN, min_labels=5, min_score=0.0)
    assert m.on_event(click(0)).held == [("user_offer", "warmup")]
    high = PropensityModel(attribution_ms=10 * MIN, min_labels=0, min_score=0.99)
    out = high.on_event(click(0))
    assert out.offers == [] and out.held == [] and out.score is not None


def test_offer_names_the_most_engaged_campaign_and_is_deterministic() -> None:
    def run() -> dict:
        m = PropensityModel(attribution_ms=10 * MIN, min_labels=0, min_score=0.0, offer_cap_ms=0)
        m.on_event(click(0, cid="x", consent=False))
        m.on_event(click(MIN, cid="x", consent=False))
        return m.on_event(click(2 * MIN, cid="y")).offers[0]

    a, b = run(), run()
    assert a["params"] == {"offer": {"campaign_id": "x"}}
    assert a["trigger_id"] == b["trigger_id"] and "propensity" in a["reason"]


def test_model_pickles_with_its_state() -> None:
    m = PropensityModel(attribution_ms=10 * MIN, min_labels=10**9)
    for i in range(20):
        m.on_event(click(i * MIN, f"u{i % 3}"))
        if i % 2:
            m.on_event(purchase(i * MIN + 1, f"u{i % 3}"))
    x = m.features("u1", click(30 * MIN, "u1"))
    restored = pickle.loads(pickle.dumps(m))
    assert restored.model.predict_proba_one(x) == m.model.predict_proba_one(x)
    assert restored.labels == m.labels


def test_idle_users_are_forgotten() -> None:
    m = PropensityModel(attribution_ms=10 * MIN, min_labels=10**9)
    m.on_event(click(0, "old"))
    m.on_event(view(30 * MIN, "new"))
    assert "old" not in m.users and "new" in m.users


def test_segments_are_bounded_and_separate_buyers_from_browsers() -> None:
    m = PropensityModel(attribution_ms=10 * MIN, min_labels=10**9)
    for i in range(200):
        m.on_event(click(i * MIN, f"buyer{i % 20}"))
        m.on_event(purchase(i * MIN + 1, f"buyer{i % 20}"))
        m.on_event(click(i * MIN + 2, f"browser{i % 20}"))
    t = 200 * MIN
    buyers = {m.segment(f"buyer{i}", t) for i in range(20)}
    browsers = {m.segment(f"browser{i}", t) for i in range(20)}
    assert buyers | browsers <= set(range(4))
    assert buyers.isdisjoint(browsers)
    assert any(k.startswith("segment=") for k in m.features("buyer1", click(t, "buyer1")))
