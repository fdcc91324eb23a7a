"""Attribution models on hand-made paths, and conformance on outside data.

The outside data: the 10,000 aggregated journeys over 12 channels the ``mta``
package ships (ChannelAttribution's example set). The references are
independent implementations: ``ChannelAttribution`` (first, last and linear touch;
its Markov model, which simulates) and ``mta``'s position-based model.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import io
from typing import Any

import pandas as pd
import pytest

from stream.core.attribution import (
    DAY_MS,
    MODELS,
    heuristic_credit,
    path_credit,
    removal_shares,
    weights,
)

HEURISTIC_POINTS = 0.01  # allowed difference of a channel's share, in percentage points
MARKOV_POINTS = 0.5


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_weights_sum_to_one(model: str, n: int) -> None:
    ages = [float(DAY_MS * (n - i)) for i in range(n)]
    assert sum(weights(n, model, ages)) == pytest.approx(1.0)


def test_each_model_on_a_hand_made_path() -> None:
    path = ["search", "email", "social", "search"]
    assert path_credit(path, "last_click") == {"search": 1.0, "email": 0.0, "social": 0.0}
    assert path_credit(path, "first_click") == {"search": 1.0, "email": 0.0, "social": 0.0}
    assert path_credit(path, "linear") == {"search": 0.5, "email": 0.25, "social": 0.25}
    assert path_credit(path, "position") == pytest.approx(
        {"search": 0.8, "email": 0.1, "social": 0.1}
    )
    # touches 21, 14, 7 and 0 days before the purchase, half-life 7 days: 1/8, 1/4, 1/2, 1
    ages = [21 * DAY_MS, 14 * DAY_MS, 7 * DAY_MS, 0]
    got = path_credit(path, "time_decay", ages)
    total = 1 / 8 + 1 / 4 + 1 / 2 + 1
    assert got == pytest.approx(
        {"search": (1 / 8 + 1) / total, "email": (1 / 4) / total, "social": (1 / 2) / total}
    )
    # a one-day half-life concentrates it on the last touch
    short = path_credit(path, "time_decay", ages, half_life_ms=DAY_MS)
    assert short["search"] > 0.99
    with pytest.raises(ValueError, match="unknown attribution model 'shapley'"):
        weights(2, "shapley")


def test_removal_effect_of_a_channel_that_only_assists() -> None:
    # half the journeys start at display and go on to search; search converts half its visits.
    # P(conversion) = 0.5: without search 0 (effect 1), without display 0.25 (effect 0.5)
    journeys = [(["display", "search"], 10, 0), (["search"], 0, 10)]
    shares = removal_shares(journeys)
    assert shares == pytest.approx({"display": 1 / 3, "search": 2 / 3})
    assert removal_shares([]) == {}


def outside_journeys() -> pd.DataFrame:
    return pd.read_csv(importlib.resources.files("mta") / "data" / "data.csv.gz")


def references(df: pd.DataFrame) -> tuple[str, dict[str, dict[str, float]]]:
    """Each model's shares (sum 1) from ChannelAttribution, else from ``mta`` alone."""
    from mta import MTA
    from mta.mta import MTAConfig

    def mta_model(run: Any, key: str) -> dict[str, float]:
        with contextlib.redirect_stdout(io.StringIO()):  # mta prints timings
            m = MTA(data=df.copy(), config=MTAConfig(allow_loops=True, add_timepoints=False))
            run(m)
        return {k.strip(): float(v) for k, v in m.attribution[key].items()}

    out = {"position": mta_model(lambda m: m.position_based(), "pos_based")}
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import ChannelAttribution as ca
    except ImportError:
        out["first_click"] = mta_model(lambda m: m.first_touch(), "first_touch")
        out["last_click"] = mta_model(lambda m: m.last_touch(), "last_touch")
        out["linear"] = mta_model(lambda m: m.linear(share="proportional"), "linear")
        out["markov"] = mta_model(lambda m: m.markov(sim=False), "markov")
        return "mta", out
    with contextlib.redirect_stdout(io.StringIO()):
        h = ca.heuristic_models(df, "path", "total_conversions", sep=">", flg_pro=False)
        m = ca.markov_model(
            df, "path", "total_conversions", var_null="total_null", sep=">",
            verbose=False, flg_pro=False,
        )  # fmt: skip
    names = h["channel_name"].str.strip()
    for model, column in (
        ("first_click", "first_touch"),
        ("last_click", "last_touch"),
        ("linear", "linear_touch"),
    ):
        out[model] = dict(zip(names, h[column] / h[column].sum(), strict=True))
    conv = m["total_conversions"]
    out["markov"] = dict(zip(m["channel_name"].str.strip(), conv / conv.sum(), strict=True))
    return "ChannelAttribution", out


def test_conformance_with_independent_implementations_on_outside_journeys() -> None:
    df = outside_journeys()
    assert len(df) == 10_000
    paths = [[c.strip() for c in p.split(">")] for p in df["path"]]
    conversions = df["total_conversions"].tolist()
    total = sum(conversions)
    source, ref = references(df)
    diffs = {}
    for model in ("first_click", "last_click", "linear", "position"):
        credit = heuristic_credit(zip(paths, conversions, strict=True), model)
        mine = {c: v / total for c, v in credit.items()}
        assert set(mine) == set(ref[model]), model
        diffs[model] = max(abs(100 * (mine[c] - ref[model][c])) for c in mine)
        assert diffs[model] <= HEURISTIC_POINTS, (model, diffs[model])
    markov = removal_shares(zip(paths, conversions, df["total_null"].tolist(), strict=True))
    assert len(markov) == 12 and sum(markov.values()) == pytest.approx(1.0)
    diffs["markov"] = max(abs(100 * (markov[c] - ref["markov"][c])) for c in markov)
    assert diffs["markov"] <= MARKOV_POINTS, diffs
    print(
        f"\nattribution conformance vs {source} (+ mta for position) on 10,000 journeys, "
        "12 channels: max share difference in points "
        + ", ".join(f"{m} {d:.5f}" for m, d in diffs.items())
    )
