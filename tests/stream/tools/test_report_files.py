"""The KPI report's files: HTML, CSV and PNG charts written, empty input writes nothing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from stream.core.report import EmptyReportError, attribution_table, metrics_frame
from stream.tools.report_files import CHARTS, write_report
from tests.stream.core.test_report import CPC, MIN, PNG_MAGIC, T0, rec, sample

TRIGGERS = [
    {
        "trigger_id": "ctr_drop:c1:1",
        "action": "campaign.alert",
        "rule": "ctr_drop",
        "target": {"campaign_id": "c1"},
        "reason": "CTR fell to <0.8%> against a 3.0% baseline",
        "evidence": {},
        "params": {},
        "created_at": T0 + 2 * MIN,
    },
    {"trigger_id": "ctr_drop:c1:1", "action": "campaign.alert", "target": {"campaign_id": "c1"}},
    {
        "trigger_id": "offer:u1",
        "action": "user.send_offer",
        "rule": "high_intent",
        "target": {"campaign_id": "c2", "user_id": "u-1"},
        "reason": "score 0.91",
        "created_at": T0 + 3 * MIN,
    },
]


def test_write_report_writes_html_csv_and_pngs(tmp_path: Path) -> None:
    df = metrics_frame(sample())
    out = tmp_path / "nested" / "report"
    path = write_report(df, out, "Q2 <KPIs>", TRIGGERS, source="pulse.metrics")
    assert path == out / "report.html"
    page = path.read_text(encoding="utf-8")

    for name in CHARTS.values():
        png = out / name
        assert png.stat().st_size > 1000, name
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert f'<img src="{name}"' in page
    assert "<title>Q2 &lt;KPIs&gt;</title>" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "<h2>Summary</h2>" in page and "650 views" in page
    assert "3.67%" in page  # c1 CTR = 22 / 600 in the campaigns table
    assert "<h2>Triggers</h2>" in page
    assert "CTR fell to &lt;0.8%&gt;" in page  # escaped
    assert page.count("campaign.alert</td>") == 1  # deduplicated on trigger_id
    assert "u-1" in page and "Triggers: 2" in page

    kpis = pd.read_csv(out / "kpis.csv")
    assert list(kpis.columns[:3]) == ["campaign_id", "variant_id", "channel"]
    assert len(kpis) == 3 and kpis["views"].sum() == 650
    row = kpis[kpis["campaign_id"] == "c1"].sort_values("views").iloc[-1]
    assert row["ctr"] == pytest.approx(20 / 400)
    windows = pd.read_csv(out / "windows.csv")
    assert len(windows) == 5 and windows["window_start_utc"].iloc[0] == "2024-05-01T12:00:00Z"


def test_write_report_without_spend_or_triggers(tmp_path: Path) -> None:
    (tmp_path / "roas.png").write_bytes(b"stale")
    df = metrics_frame([rec("c1", window=w) for w in range(3)])
    path = write_report(df, tmp_path, "no spend")
    page = path.read_text(encoding="utf-8")
    assert not (tmp_path / "roas.png").exists()  # no cost model: no ROAS chart (stale one gone)
    assert "roas.png" not in page and "ctr.png" in page
    assert "<h2>Triggers</h2>" not in page and "No spend" in page
    assert (tmp_path / "revenue.png").stat().st_size > 1000


def test_write_report_many_campaigns_and_empty_triggers(tmp_path: Path) -> None:
    records = [
        rec(f"c{i:02d}", "A", "web", w, (100 + i, i, 0, float(i)), CPC)
        for i in range(14)
        for w in range(3)
    ]
    path = write_report(metrics_frame(records), tmp_path, "many", triggers=[])
    page = path.read_text(encoding="utf-8")
    assert "No triggers." in page and "Triggers: none." in page
    assert page.count("<tr>") >= 14


def test_write_report_empty_input_raises_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(EmptyReportError) as info:
        write_report(metrics_frame([]), out, "empty")
    assert isinstance(info.value, ValueError)
    assert "PULSE_WINDOW + PULSE_GRACE" in str(info.value)
    assert "topic prefix" in str(info.value)
    assert not out.exists()


def test_the_attribution_models_side_by_side(tmp_path: Path) -> None:
    records = sample()
    records[0]["attributed"] = {
        "last_click": {"purchases": 1.0, "revenue": 30.0},
        "linear": {"purchases": 0.5, "revenue": 15.0},
    }
    table = attribution_table(records)
    path = write_report(metrics_frame(records), tmp_path, "r", attribution=table)
    page = path.read_text(encoding="utf-8")
    assert "<h2>Attribution models</h2>" in page and "attribution.csv" in page
    saved = pd.read_csv(tmp_path / "attribution.csv")
    row = saved[saved["campaign_id"] == records[0]["campaign_id"]].iloc[0]
    assert (row["last_click_revenue"], row["linear_purchases"], row["position_purchases"]) == (
        30.0, 0.5, 0.0,
    )  # fmt: skip
    assert "markov_purchases" in saved.columns  # the data-driven model beside them
    assert not (
        write_report(metrics_frame(sample()), tmp_path / "b", "r").parent / "attribution.csv"
    ).exists()
