"""pulse backtest without a broker: windows, late, duplicates, attribution, outputs."""

from __future__ import annotations

import fastjsonschema
import orjson

from schemas import load_schema
from stream.config import Settings
from stream.core.fx import read_csv
from stream.core.privacy import Pseudonymizer
from stream.tools.backtest import partition_for, run_backtest
from tests.integration.helpers import final_click, history, offer_rules

BASE = 1_700_000_000_000 - 1_700_000_000_000 % 10_000


def ev(n: str, etype: str, t_s: float, cid: str | None = "c1", **extra: object) -> dict:
    e: dict = {"event_id": n, "type": etype, "event_time": BASE + int(t_s * 1000), "user_id": "u1"}
    if cid:
        e["campaign_id"] = cid
    if etype == "purchase":
        e.update(revenue=5.0, currency="eur")
    e.update(extra)
    return e


def test_backtest_writes_exact_windows(tmp_path) -> None:
    events = [
        ev("v1", "view", 1),
        ev("v2", "view", 2),
        ev("c1", "click", 3),
        ev("v1", "view", 1),  # duplicate
        ev("v3", "view", 12),
        ev("p1", "purchase", 14, cid=None),  # attributed to c1 (click at 3 s)
        ev("v4", "view", 25),
    ]
    late = ev("late", "view", 4)  # after watermark 25 − 5 = 20 closed [0, 10) in an earlier batch
    path = tmp_path / "events.jsonl"
    lines = [orjson.dumps(e) for e in events] + [b"not json", orjson.dumps(late)]
    path.write_bytes(b"\n".join(lines))
    env = {"PULSE_WINDOW": "10s", "PULSE_GRACE": "5s", "PULSE_PARTITIONS": "4"}
    env["PULSE_CURRENCY"] = "EUR"  # the purchases' currency
    summary = run_backtest(Settings.from_env(env), path, tmp_path / "out", progress=False, batch=7)
    rows = [orjson.loads(x) for x in (tmp_path / "out/metrics.jsonl").read_bytes().splitlines()]
    got = {
        r["window_start"] - BASE: (r["views"], r["clicks"], r["purchases"], r["revenue"])
        for r in rows
    }
    assert got == {0: (2, 1, 0, 0.0), 10_000: (1, 0, 1, 5.0), 20_000: (1, 0, 0, 0.0)}
    dlq = [
        orjson.loads(x)["reason"] for x in (tmp_path / "out/dlq.jsonl").read_bytes().splitlines()
    ]
    assert sorted(dlq) == ["invalid_json", "late"]
    assert (summary["duplicates"], summary["late"], summary["windows"]) == (1, 1, 3)
    assert orjson.loads((tmp_path / "out/summary.json").read_bytes())["records"] == 9


def test_partitions_follow_kafka_default_partitioner() -> None:
    # murmur2-based, as the Java client and aiokafka assign keyed records
    assert {partition_for(f"u{i}".encode(), 4, 0) for i in range(50)} == {0, 1, 2, 3}
    assert partition_for(None, 4, 6) == 2


def test_backtest_pseudonymises_like_the_worker(tmp_path) -> None:
    rules = offer_rules(tmp_path, 20, 0.6)
    events = [*history(), final_click("buyer-0", True, 1), final_click("browser-0", True, 2)]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in events))
    env = {
        "PULSE_RULES": str(rules),
        "PULSE_ATTRIBUTION_WINDOW": "60s",
        "PULSE_WINDOW": "60s",
        "PULSE_GRACE": "5s",
        "PULSE_PSEUDONYMIZE_SALT": "pepper",
        "PULSE_CURRENCY": "EUR",  # history()'s purchases
    }
    run_backtest(Settings.from_env(env), path, tmp_path / "out", progress=False)
    lines = (tmp_path / "out/triggers.jsonl").read_bytes().splitlines()
    triggers = [orjson.loads(x) for x in lines]
    offers = [t["target"]["user_id"] for t in triggers if t["action"] == "user.send_offer"]
    assert offers == [Pseudonymizer("pepper")("buyer-0")]


def test_backtest_converts_with_the_rates_of_an_fx_file(tmp_path) -> None:
    events = [
        ev("c1", "click", 1),
        ev("p1", "purchase", 2),  # 5 EUR at 1.10
        ev("p2", "purchase", 12, currency="GBP"),  # 5 GBP: no rate in the file
        ev("p3", "purchase", 13),  # 5 EUR at 1.20 (from 10 s on)
        ev("v1", "view", 25),
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in events))
    rates = tmp_path / "rates.csv"
    rates.write_text(f"currency,rate,valid_from\nEUR,1.10,{BASE}\neur,1.20,{BASE + 10_000}\n")
    settings = Settings.from_env({"PULSE_WINDOW": "10s", "PULSE_GRACE": "5s"})  # USD
    run_backtest(
        settings, path, tmp_path / "out", progress=False, fx=read_csv(rates, settings.currency)
    )
    rows = [orjson.loads(x) for x in (tmp_path / "out/metrics.jsonl").read_bytes().splitlines()]
    got = {
        r["window_start"] - BASE: (r["revenue"], r["unconverted"], r["revenue_by_currency"])
        for r in rows
        if r["purchases"]
    }
    assert got == {0: (5.5, {}, {"EUR": 5.0}), 10_000: (6.0, {"GBP": 1}, {"EUR": 5.0, "GBP": 5.0})}
    triggers = [
        orjson.loads(x) for x in (tmp_path / "out/triggers.jsonl").read_bytes().splitlines()
    ]
    assert [t["evidence"]["unconverted"] for t in triggers if t["rule"] == "fx_missing"] == [
        {"GBP": 1}
    ]


def test_backtest_writes_offer_outcomes_that_the_report_compares(tmp_path) -> None:
    from stream.core.browsing import BrowseSim
    from stream.tools.report import run_report

    rules = offer_rules(tmp_path, 0, 0.0)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in BrowseSim(users=200, seed=8).events()))
    env = {"PULSE_RULES": str(rules), "PULSE_ATTRIBUTION_WINDOW": "1h", "PULSE_CURRENCY": "USD"}
    summary = run_backtest(Settings.from_env(env), path, tmp_path / "out", progress=False)
    outcomes = [orjson.loads(x) for x in (tmp_path / "out/offers.jsonl").read_bytes().splitlines()]
    check = fastjsonschema.compile(load_schema("offer"))
    for outcome in outcomes:
        check(outcome)
    groups = {o["group"] for o in outcomes}
    assert groups == {"offer", "holdout"} and summary["offers"] > 0
    offered = sum(o["group"] == "offer" for o in outcomes)
    assert offered == summary["offers"]  # every offer is followed to its outcome
    triggers = (tmp_path / "out/triggers.jsonl").read_bytes().splitlines()
    offers = [t for t in map(orjson.loads, triggers) if t["action"] == "user.send_offer"]
    assert all(o["params"]["offer"]["items"] for o in offers)
    page = run_report(None, tmp_path / "out", tmp_path / "report", progress=False).read_text()
    assert "Offers against the holdout" in page and "offer − holdout" in page
    assert (tmp_path / "report" / "offers.csv").is_file()
