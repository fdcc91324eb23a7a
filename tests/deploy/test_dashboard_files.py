"""The Grafana dashboards in grafana/dashboards: structure, datasource, variables, metric names.

Pure file checks (no Grafana, no Prometheus); tests/integration/test_dashboards.py runs
every expression on a real Prometheus.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream.telemetry import CONTRACT_METRICS
from tests.deploy import promql

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = {
    "campaign-performance.json": "Pulse — Campaign performance",
    "models-triggers.json": "Pulse — Models & triggers",
    "pipeline-health.json": "Pulse — Pipeline health",
}
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
#: Exported beyond the contract (stream.telemetry.CONTRACT_METRICS): collector, Faust sensors,
#: rejected campaign settings, refused state records, CPU per pipeline stage.
EXTRA_METRICS = {
    "pulse_http_requests_total",
    "pulse_stage_cpu_seconds_total",
    "pulse_consumer_lag",
    "pulse_commit_latency_seconds",
    "pulse_campaign_settings_rejected_total",
    "pulse_state_records_refused_total",
    "pulse_identity_links_total",
    "pulse_identity_handovers_total",
    # exported by `pulse deliver` (its own process and port), not by the worker
    "pulse_deliveries_total",
    "pulse_delivery_latency_seconds",
    "pulse_delivery_attempts_total",
}
RANGE_WINDOWS = {"$__rate_interval", "1m"}

FILES = [promql.DASHBOARDS / name for name in DASHBOARDS]


def leaf_panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in promql.iter_panels(doc["panels"]) if p.get("type") != "row"]


def test_the_three_dashboards_exist() -> None:
    assert {p.name for p in promql.dashboard_files()} >= set(DASHBOARDS)


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_dashboard_structure(path: Path) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["title"] == DASHBOARDS[path.name]
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", doc["uid"]), doc["uid"]
    assert doc["schemaVersion"] == 39
    assert doc.get("id") is None, "provisioned dashboards carry no database id"
    ids = [p["id"] for p in promql.iter_panels(doc["panels"])]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {path.name}"
    panels = leaf_panels(doc)
    assert panels
    for panel in panels:
        where = f"{path.name} / {panel.get('title')}"
        assert panel.get("title"), where
        assert panel["datasource"] == DATASOURCE, where
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, where
        targets = panel.get("targets")
        assert targets, f"{where}: no targets"
        refs = [t.get("refId") for t in targets]
        assert all(refs) and len(refs) == len(set(refs)), f"{where}: refIds {refs}"
        for t in targets:
            assert isinstance(t.get("expr"), str) and t["expr"].strip(), f"{where}: no expr"
            assert t.get("datasource", DATASOURCE) == DATASOURCE, where


def test_uids_are_unique() -> None:
    uids = [json.loads(p.read_text())["uid"] for p in promql.dashboard_files()]
    assert len(uids) == len(set(uids))


def test_every_expression_substitutes_and_uses_allowed_windows() -> None:
    expressions = promql.dashboard_expressions()  # raises on an unknown $variable
    assert len(expressions) >= 40
    for e in expressions:
        assert "$" not in e.expr and "[[" not in e.expr, e.describe()
        assert e.expr.count("(") == e.expr.count(")"), e.describe()
        assert e.expr.count("{") == e.expr.count("}"), e.describe()
        for window in re.findall(r"\[([^\]]+)\]", e.raw):
            assert window in RANGE_WINDOWS, f"{e.describe()}: window [{window}]"


def test_campaign_variable() -> None:
    doc = promql.load(promql.DASHBOARDS / "campaign-performance.json")
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    campaign = variables["campaign"]
    assert campaign["type"] == "query" and campaign["datasource"] == DATASOURCE
    assert campaign["definition"] == "label_values(pulse_campaign_views_total, campaign_id)"
    assert campaign["includeAll"] and campaign["allValue"] == ".*"
    uses = [
        t["expr"] for p in leaf_panels(doc) for t in p["targets"] if "pulse_campaign_" in t["expr"]
    ]
    assert uses and all('campaign_id=~"$campaign"' in expr for expr in uses)


def test_metric_names_are_in_the_contract() -> None:
    allowed = CONTRACT_METRICS | EXTRA_METRICS
    assert "pulse_campaign_spend_total" in allowed and "pulse_event_lag_seconds" in allowed
    used: dict[str, set[str]] = {}
    for e in promql.dashboard_expressions():
        for name in e.base_metrics:
            used.setdefault(name, set()).add(e.describe())
    unknown = {name: sorted(where) for name, where in used.items() if name not in allowed}
    assert not unknown, f"metric names outside PRODUCT.md's table: {unknown}"


def test_dashboards_cover_the_brief() -> None:
    """Every contract metric a dashboard is meant to show appears in some expression."""
    used = {m for e in promql.dashboard_expressions() for m in e.base_metrics}
    assert (CONTRACT_METRICS | EXTRA_METRICS) - used == set()


def test_provisioning_points_at_the_dashboards() -> None:
    ds = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert {(d["uid"], d["type"]) for d in ds["datasources"]} == {("prometheus", "prometheus")}
    providers = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/pulse.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    compose = yaml.safe_load((ROOT / "docker-compose.kafka.yml").read_text())
    volumes = compose["services"]["grafana"]["volumes"]
    assert any(v.startswith("./grafana/dashboards:/var/lib/grafana/dashboards") for v in volumes)


# --------------------------------------------------------------------------- promql helper


def test_substitution() -> None:
    sub = promql.substitute
    assert sub('x{a="$campaign"}', {"campaign"}) == 'x{a=~".*"}'
    assert sub('x{a!="${campaign}"}', {"campaign"}) == 'x{a!~".*"}'
    assert sub('x{a=~"[[campaign]]", b="web"}', {"campaign"}) == 'x{a=~".*", b="web"}'
    assert sub('x{a=~"${campaign:regex}"}', {"campaign"}) == 'x{a=~".*"}'
    assert sub("rate(x[$__rate_interval]) + rate(y[$__interval])", set()) == (
        "rate(x[1m]) + rate(y[15s])"
    )
    with pytest.raises(ValueError, match="unknown template variable"):
        sub('x{a="$nope"}', {"campaign"})


def test_variable_queries() -> None:
    ve = promql.variable_expression
    assert ve("label_values(m, l)", set()) == "m"
    assert ve('label_values(m{a=~"$c", b="x,y"}, l)', {"c"}) == 'm{a=~".*", b="x,y"}'
    assert ve("label_values(campaign_id)", set()) == '{campaign_id!=""}'
    assert ve("query_result(sum(rate(m[$__rate_interval])))", set()) == "sum(rate(m[1m]))"
    assert ve("label_names()", set()) is None


def test_extraction_walks_rows_and_variables(tmp_path: Path) -> None:
    doc = {
        "title": "t",
        "uid": "t",
        "panels": [
            {"type": "timeseries", "id": 1, "targets": [{"refId": "A", "expr": "a_total"}]},
            {
                "type": "row",
                "id": 2,
                "collapsed": True,
                "panels": [
                    {
                        "type": "stat",
                        "id": 3,
                        "title": "nested",
                        "targets": [
                            {"refId": "A", "expr": 'sum(b{c="$v"})'},
                            {"refId": "B", "expr": ""},
                        ],
                    }
                ],
            },
        ],
        "templating": {
            "list": [
                {"name": "v", "type": "query", "query": {"query": "label_values(c_total, c)"}},
                {"name": "w", "type": "query", "query": 'label_values(d{c=~"$v"}, e)'},
                {"name": "k", "type": "custom", "query": "a,b"},
            ]
        },
    }
    (tmp_path / "t.json").write_text(json.dumps(doc))
    got = [(e.panel, e.ref, e.expr) for e in promql.dashboard_expressions(tmp_path)]
    assert got == [
        ("panel 1", "A", "a_total"),
        ("nested", "A", 'sum(b{c=~".*"})'),
        ("variable v", "v", "c_total"),
        ("variable w", "w", 'd{c=~".*"}'),
    ]


def test_metric_names() -> None:
    names = promql.metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(h_bucket{x="a b"}[1m]))) / on(job) '
        "group_left(instance) up offset 5m > bool 1e3 and vector(1)"
    )
    assert names == {"h_bucket", "up"}
    assert promql.base_metric("h_count") == "h" and promql.base_metric("x_total") == "x_total"
