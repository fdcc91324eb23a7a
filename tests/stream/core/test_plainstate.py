"""Plain-data checkpoints restore models and detectors that behave bit for bit the same."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from river import drift

from stream.core import plainstate
from stream.core.propensity import PropensityModel

MIN = 60_000


def events(seed: int, start: int, n: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = rng.choices(["view", "click", "purchase"], [6, 3, 1])[0]
        e: dict[str, Any] = {
            "type": kind,
            "ts": start + i * 7_000,
            "user_id": f"u{rng.randrange(40)}",
            "campaign_id": f"c{rng.randrange(6)}",
            "channel": rng.choice(["web", "email", "social"]),
            "consent": {"marketing": rng.random() < 0.8},
        }
        if kind == "purchase":
            e["revenue"] = round(rng.uniform(5, 200), 2)
        out.append(e)
    return out


def model() -> PropensityModel:
    return PropensityModel(attribution_ms=10 * MIN, min_labels=30, min_score=0.3)


def test_a_restored_propensity_model_scores_learns_and_offers_identically() -> None:
    m = model()
    for e in events(1, 0, 1500):
        m.on_event(e)
    assert m.labels > 100 and m.pending and m.last_offer
    data = plainstate.dumps(m.to_state())
    assert data.startswith(plainstate.MAGIC) and b"\x80\x05" not in data[:64]
    twin = model()
    twin.load_state(plainstate.loads(data))
    later = events(2, 1500 * 7_000, 1500)
    for e in later:
        a, b = m.on_event(e), twin.on_event(e)
        assert (a.score, a.offers, a.held) == (b.score, b.offers, b.held)
        assert m.user_segment(e["user_id"], e["ts"]) == twin.user_segment(e["user_id"], e["ts"])
    assert plainstate.dumps(twin.to_state()) == plainstate.dumps(m.to_state())
    assert twin.rocauc.get() == m.rocauc.get() and twin.logloss.get() == m.logloss.get()
    x = {"recency_h": 2.0, "purchases": 1.2, "user_cvr": 0.7, "channel=web": 1.0}
    assert twin.model.predict_proba_one(x) == m.model.predict_proba_one(x)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda s: s.pop("users"),
        lambda s: s.update(format=99),
        lambda s: s["model"].update(weights=[["w", "not a number"]]),
        lambda s: s["rocauc"].pop(),
        lambda s: s.update(pending=[[1, "u", {"x": 1.0}]]),
    ],
)
def test_a_checkpoint_of_another_shape_raises(corrupt: Any) -> None:
    m = model()
    for e in events(3, 0, 300):
        m.on_event(e)
    state = plainstate.loads(plainstate.dumps(m.to_state()))
    corrupt(state)
    with pytest.raises((ValueError, TypeError, KeyError, IndexError)):
        model().load_state(state)


def test_a_restored_page_hinkley_detects_drift_at_the_same_point() -> None:
    rng = random.Random(4)
    series = [rng.gauss(5, 0.5) for _ in range(40)] + [rng.gauss(9, 0.5) for _ in range(40)]

    def new() -> drift.PageHinkley:
        return drift.PageHinkley(min_instances=5, delta=0.05, threshold=5.0, mode="both")

    d = new()
    fresh = orjson.loads(orjson.dumps(plainstate.page_hinkley_state(d)))  # as merger snapshots
    assert fresh["extremes"][0] == "inf"
    plainstate.load_page_hinkley(new(), fresh)
    for x in series[:30]:
        d.update(x)
    twin = new()
    plainstate.load_page_hinkley(
        twin, plainstate.loads(plainstate.dumps(plainstate.page_hinkley_state(d)))
    )
    flags = []
    for x in series[30:]:
        d.update(x)
        twin.update(x)
        flags.append((d.drift_detected, twin.drift_detected))
    assert any(a for a, _ in flags) and all(a == b for a, b in flags)
