"""The pure KPI report: frames, tables computed from sums, empty input."""

from __future__ import annotations

import doctest
import math
from typing import Any

import pytest

import stream.core.report as report_module
from stream.core.kpis import metric_record
from stream.core.report import kpi_tables, metrics_frame

T0 = 1_714_564_800_000
MIN = 60_000
CPC = {"cost_model": "cpc", "cost": 0.5}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rec(
    campaign: str = "c1",
    variant: str | None = "A",
    channel: str = "web",
    window: int = 0,
    counts: tuple[int, int, int, float] = (100, 10, 1, 20.0),
    cost: dict[str, Any] | None = None,
) -> dict[str, Any]:
    start = T0 + window * MIN
    return metric_record(campaign, variant or "", channel, start, start + MIN, list(counts), cost)


def sample() -> list[dict[str, Any]]:
    return [
        rec("c1", "A", "web", 0, (100, 10, 1, 20.0), CPC),
        rec("c1", "A", "web", 1, (300, 10, 4, 80.0), CPC),
        rec("c1", "B", "mobile", 0, (200, 2, 0, 0.0), CPC),
        rec("c2", None, "email", 0, (50, 5, 5, 100.0)),
        rec("c2", None, "email", 1, (0, 0, 0, 0.0)),
    ]


# -- metrics_frame ------------------------------------------------------------------------


def test_metrics_frame_types_order_and_nulls() -> None:
    df = metrics_frame(sample())
    assert list(df.columns) == list(report_module.FIELDS)
    assert len(df) == 5
    assert df["views"].dtype == "int64" and df["window_start"].dtype == "int64"
    assert df["revenue"].dtype == "float64" and df["spend"].dtype == "float64"
    assert df["window_start"].is_monotonic_increasing
    c2 = df[df["campaign_id"] == "c2"]
    assert c2["variant_id"].isna().all()  # "" / None variant → missing, not the string "None"
    assert c2["spend"].isna().all() and c2["roas"].isna().all()
    assert math.isnan(df.loc[(df["campaign_id"] == "c2") & (df["views"] == 0), "ctr"].iloc[0])


def test_metrics_frame_drops_redelivered_window_and_fills_missing_fields() -> None:
    first = rec(counts=(100, 10, 1, 20.0))
    again = rec(counts=(100, 12, 1, 20.0))  # same key: at-least-once redelivery, last wins
    partial = {"campaign_id": "c9", "window_start": T0, "window_end": T0 + MIN, "views": 7}
    df = metrics_frame([first, again, partial, "not a record"])  # type: ignore[list-item]
    assert len(df) == 2
    assert df.loc[df["campaign_id"] == "c1", "clicks"].tolist() == [12]
    c9 = df[df["campaign_id"] == "c9"].iloc[0]
    assert (c9["views"], c9["clicks"], c9["revenue"], c9["channel"]) == (7, 0, 0.0, "web")


def test_metrics_frame_empty_and_malformed() -> None:
    empty = metrics_frame([])
    assert empty.empty and list(empty.columns) == list(report_module.FIELDS)
    with pytest.raises(ValueError, match="lack window_start, window_end"):
        metrics_frame([{"campaign_id": "c1", "views": 1}])


# -- kpi_tables ---------------------------------------------------------------------------


def test_kpis_are_ratios_of_sums_never_averages() -> None:
    tables = kpi_tables(metrics_frame(sample()))
    assert set(tables) == {"totals", "campaigns", "variants", "channels", "breakdown", "windows"}
    c1 = tables["campaigns"].set_index("campaign_id").loc["c1"]
    assert (c1["views"], c1["clicks"], c1["purchases"]) == (600, 22, 5)
    assert c1["windows"] == 2
    assert c1["ctr"] == pytest.approx(22 / 600)  # mean of window CTRs would be 0.0478
    assert c1["cvr"] == pytest.approx(5 / 22)
    assert c1["revenue"] == pytest.approx(100.0)
    assert c1["spend"] == pytest.approx(11.0)  # cpc 0.5 × 22 clicks
    assert c1["roas"] == pytest.approx(100.0 / 11.0)
    c2 = tables["campaigns"].set_index("campaign_id").loc["c2"]
    assert math.isnan(c2["spend"]) and math.isnan(c2["roas"])  # no cost model: no ROAS
    assert c2["ctr"] == pytest.approx(0.1)  # the zero-view window does not disturb it

    total = tables["totals"].iloc[0]
    assert (total["views"], total["clicks"], total["purchases"]) == (650, 27, 10)
    assert total["revenue"] == pytest.approx(200.0)
    assert total["ctr"] == pytest.approx(27 / 650)
    # ROAS counts only revenue from windows that had spend (c2's 100.0 is unpriced)
    assert total["roas"] == pytest.approx(100.0 / 11.0)


def test_kpi_tables_breakdowns_keep_missing_variant_and_cover_every_record() -> None:
    tables = kpi_tables(metrics_frame(sample()))
    variants = tables["variants"]
    assert len(variants) == 3
    assert variants["variant_id"].isna().sum() == 1  # c2 without variant is a group of its own
    b = variants[(variants["campaign_id"] == "c1") & (variants["variant_id"] == "B")].iloc[0]
    assert b["cvr"] == 0.0 and b["ctr"] == pytest.approx(0.01)
    channels = tables["channels"].set_index("channel")
    assert channels.loc["web", "views"] == 400 and channels.loc["email", "purchases"] == 5
    for name in ("campaigns", "variants", "channels", "breakdown"):
        assert tables[name]["views"].sum() == 650, name
    windows = tables["windows"]
    assert len(windows) == 4  # campaign × window
    w0 = windows[(windows["campaign_id"] == "c1") & (windows["window_start"] == T0)].iloc[0]
    assert w0["views"] == 300 and w0["ctr"] == pytest.approx(12 / 300)
    assert str(w0["time"]) == "2024-05-01 12:00:00+00:00"


def test_kpi_tables_empty_says_what_to_do() -> None:
    with pytest.raises(ValueError, match=r"no closed windows found: let the worker run past"):
        kpi_tables(metrics_frame([]))


def test_module_doctest() -> None:
    result = doctest.testmod(report_module)
    assert result.failed == 0 and result.attempted > 0
