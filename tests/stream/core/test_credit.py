"""Credit per campaign and channel from metric records: the live API's and the report's."""

from __future__ import annotations

from typing import Any

import pytest

from stream.core.attribution import removal_shares
from stream.core.credit import ALL_MODELS, AttributionView, attribution_summary
from stream.core.kpis import metric_record
from stream.core.windows import PartitionWindows, RowKey

JOURNEYS = [
    (["search", "email", "search"], 1),
    (["display", "search"], 1),
    (["display"], 0),
    (["email"], 0),
    (["email", "display"], 1),
]


def records_of(journeys: list[tuple[list[str], int]]) -> list[dict[str, Any]]:
    """The journeys (campaign = channel name) through windows, as metric records."""
    pw = PartitionWindows(60_000, 10_000, 3_600_000)
    t = 0
    for i, (path, converted) in enumerate(journeys):
        for cid in path:
            t += 1
            pw.add({"type": "click", "ts": t, "campaign_id": cid, "channel": "web",
                    "user_id": f"u{i}"})  # fmt: skip
        if converted:
            t += 1
            pw.add({"type": "purchase", "ts": t, "user_id": f"u{i}", "revenue": 20.0})
    out = []
    for ws, rows in pw.close(watermark=10**12):
        key: RowKey
        for key, row in rows.items():
            out.append(metric_record(*key, ws, ws + 60_000, row))
    return out


def test_markov_over_streamed_steps_equals_the_batch_removal_effect() -> None:
    got = attribution_summary(records_of(JOURNEYS))
    want = removal_shares([(p, c, 1 - c) for p, c in JOURNEYS])
    shares = {c: row["markov"]["share"] for c, row in got["campaigns"].items()}
    assert shares == pytest.approx(want, abs=1e-6)
    assert got["journeys"] == {"clicks": 9, "conversions": 3, "value": 60.0}
    markov = {c: row["markov"]["purchases"] for c, row in got["campaigns"].items()}
    assert sum(markov.values()) == pytest.approx(3.0)
    # the rule-based credit is the records' own, summed
    assert got["campaigns"]["search"]["last_click"] == {"purchases": 2.0, "revenue": 40.0}
    first = {c: row["first_click"]["purchases"] for c, row in got["campaigns"].items()}
    assert first == {"display": 1.0, "email": 1.0, "search": 1.0}
    assert list(got["campaigns"]["email"]) == list(ALL_MODELS)
    # all clicks on the web channel: one state, which takes all the credit
    assert got["channels"]["web"]["markov"]["share"] == pytest.approx(1.0)


def test_records_without_credit_fields_add_nothing() -> None:
    view = AttributionView()
    view.apply({"campaign_id": "c", "channel": "web", "window_start": 0, "window_end": 60})
    view.apply({"channel": "web"})  # no campaign: not a window record
    out = view.summary()
    assert (out["campaigns"], out["window_start"], out["window_end"]) == ({}, 0, 60)
    assert out["journeys"] == {"clicks": 0, "conversions": 0, "value": 0.0}
