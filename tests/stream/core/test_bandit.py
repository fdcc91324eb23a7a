"""Thompson-sampling allocation and its rails, no broker."""

from __future__ import annotations

import pytest

from stream.core.bandit import Allocator, srm_p_value
from stream.core.merge import WindowMerger
from stream.core.pipeline import MergeStage
from stream.core.triggers import TriggerEngine, load_rules

W = 60_000


def test_weights_favour_the_better_variant_with_a_floor() -> None:
    a = Allocator(floor=0.05, min_views=100)
    weights, why = a.propose("c", 0, {"A": (5000, 100), "B": (5000, 250)})
    assert why is None and weights["B"] > 0.9 and weights["A"] == pytest.approx(0.05, abs=0.01)
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    ("stats", "why"),
    [
        ({"A": (50, 1), "B": (5000, 250)}, "min_sample"),
        ({"A": (5000, 100)}, "single_variant"),
        ({"A": (5000, 150), "B": (5000, 151)}, "no_material_change"),  # ~50/50 = current split
    ],
)
def test_rails(stats, why) -> None:
    assert Allocator(min_views=1000).propose("c", 0, stats)[1] == why


def test_same_campaign_and_window_give_the_same_weights() -> None:
    stats = {"A": (3000, 90), "B": (3000, 110)}
    assert Allocator().thompson("c", 5, stats) == Allocator().thompson("c", 5, stats)


@pytest.mark.parametrize(
    ("observed", "weights", "low"),
    [
        ({"A": 500, "B": 500}, {"A": 0.5, "B": 0.5}, False),
        ({"A": 600, "B": 400}, {"A": 0.5, "B": 0.5}, True),
        ({"A": 100, "B": 900}, {"A": 0.1, "B": 0.9}, False),
    ],
)
def test_srm(observed, weights, low) -> None:
    assert (srm_p_value(observed, weights) < 0.001) is low


def stage() -> MergeStage:
    return MergeStage(
        WindowMerger(1, W), TriggerEngine(load_rules()), lambda c: None, Allocator(min_views=1000)
    )


def window(ws: int, a_clicks: int, b_clicks: int, a_views: int = 1000, b_views: int = 1000):
    return [
        (
            0,
            ws + W,
            [
                (
                    ws,
                    {
                        ("c", "A", "web"): [a_views, a_clicks, 0, 0.0],
                        ("c", "B", "web"): [b_views, b_clicks, 0, 0.0],
                    },
                )
            ],
        )
    ]


def test_reallocate_trigger_through_the_merge_stage() -> None:
    s = stage()
    out = s.add(window(0, 20, 60), now_ms=1)
    moves = [t for t in out.triggers if t["action"] == "campaign.reallocate"]
    assert len(moves) == 1
    t = moves[0]
    assert t["params"]["weights"]["B"] > 0.9 and "Variant B of c" in t["reason"]
    again = s.add(window(W, 20, 60), now_ms=2)  # same picture: no material change
    assert not [t for t in again.triggers if t["action"] == "campaign.reallocate"]


def test_sample_ratio_mismatch_blocks_a_move() -> None:
    s = stage()
    s.allocator.weights["c"] = {"A": 0.5, "B": 0.5}
    out = s.add(window(0, 10, 200, a_views=1000, b_views=3000), now_ms=1)
    assert ("variant_allocation", "srm") in out.held
    assert not [t for t in out.triggers if t["action"] == "campaign.reallocate"]


def test_a_leader_just_short_of_the_cap_still_settles_on_it() -> None:
    a = Allocator(floor=0.05, min_views=100, min_change=0.1)
    a.weights["c"] = {"A": 0.14, "B": 0.86}  # within min_change of the 0.95 cap
    weights, why = a.propose("c", 0, {"A": (50_000, 1000), "B": (50_000, 1500)})
    assert why is None and weights["B"] > 0.94
    a.weights["c"] = weights
    assert a.propose("c", 60_000, {"A": (60_000, 1200), "B": (60_000, 1800)})[1] == (
        "no_material_change"
    )
