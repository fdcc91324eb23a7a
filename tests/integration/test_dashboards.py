"""Every PromQL expression of the Grafana dashboards, run by a real Prometheus.

A real ``prometheus`` binary (Debian package, installed by ``make deps``) scrapes a
live Pulse worker every second while simulated traffic goes through the HTTP
collector; then each dashboard expression (:mod:`tests.deploy.promql`) is sent to
Prometheus' ``/api/v1/query``. Every expression must be valid PromQL, and every
expression must return data unless it reads a metric in :data:`PENDING_METRICS`
(series a later feature will export). The answers are saved to
``artifacts/prometheus-results.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream.config import Settings
from stream.core.simulator import SimConfig
from stream.kafka.writer import EventWriter
from stream.tools.broker import free_port
from stream.tools.simulate import run_simulation
from tests.deploy.promql import base_metric, dashboard_expressions

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "artifacts" / "prometheus-results.json"

#: Metric names the dashboards read that the worker does not export yet (checked
#: against a live worker's /metrics under simulated traffic). Expressions on them
#: must still be valid PromQL; they are not expected to return data. Remove a name
#: as soon as the worker exports it (the test warns when one is exported).
PENDING_METRICS = frozenset(
    {
        # drift needs a CTR series long enough for Page-Hinkley to fire
        "pulse_model_drift_total",
        # exported by `pulse deliver`, another process this test does not run or scrape
        # (tests/integration/test_deliver.py reads them from its /metrics)
        "pulse_deliveries_total",
        "pulse_delivery_latency_seconds",
        "pulse_delivery_attempts_total",
    }
)

SCRAPE_INTERVAL = "1s"
#: How long expressions may take to return data after the traffic (windows closing).
SETTLE_S = 30.0
SIM = SimConfig(rate=300, duration_s=20, campaigns=3)
#: Short windows so that several close during the 20 s run (CTR, CVR, ROAS gauges, spend).
WORKER_OVERRIDES = {"PULSE_WINDOW": "5s", "PULSE_GRACE": "2s"}
#: Cost models (pulse.campaigns) of the simulated campaigns cmp-001..cmp-003.
CAMPAIGN_SETTINGS = {
    "cmp-001": {"campaign_id": "cmp-001", "cost_model": "cpc", "cost": 0.4},
    "cmp-002": {"campaign_id": "cmp-002", "cost_model": "cpm", "cost": 6.0},
    "cmp-003": {"campaign_id": "cmp-003", "cost_model": "cpc", "cost": 0.25},
}
AUTH = {"Authorization": "Bearer test-key"}


def prometheus_binary() -> str | None:
    found = shutil.which("prometheus")
    if found:
        return found
    if os.access("/usr/bin/prometheus", os.X_OK):
        return "/usr/bin/prometheus"
    return None


class Prometheus:
    """A real Prometheus server on a free loopback port, scraping one target."""

    def __init__(self, binary: str, target: str, workdir: Path) -> None:
        self.binary = binary
        self.target = target
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def start(self) -> Prometheus:
        config = self.workdir / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {SCRAPE_INTERVAL}\n"
            f"  scrape_timeout: {SCRAPE_INTERVAL}\n"
            f"  evaluation_interval: {SCRAPE_INTERVAL}\n"
            "scrape_configs:\n"
            "  - job_name: pulse\n"
            "    static_configs:\n"
            f'      - targets: ["{self.target}"]\n'
        )
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        log.close()
        return self

    def stop(self) -> None:
        self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def wait_target_up(self, timeout_s: float = 30) -> None:
        """Wait until Prometheus answers and its scrape of the worker succeeded."""
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, (
                f"prometheus exited ({self.proc and self.proc.returncode}); log:\n{self.tail()}"
            )
            try:
                r = self.client.get("/api/v1/targets", params={"state": "active"})
                if r.status_code == 200:
                    last = r.json()["data"]["activeTargets"]
                    if any(t["health"] == "up" for t in last):
                        return
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.2)
        raise AssertionError(f"target never up in {timeout_s}s: {last}; log:\n{self.tail()}")

    def query(self, expr: str) -> dict[str, Any]:
        r = self.client.get("/api/v1/query", params={"query": expr})
        # 400/422 carry {"status": "error", "errorType", "error"}: invalid PromQL
        return r.json()

    def scalar(self, expr: str) -> float | None:
        answer = self.query(expr)
        result = answer.get("data", {}).get("result") or []
        return float(result[0]["value"][1]) if result else None


def exported_metrics(metrics_text: str) -> set[str]:
    """Metric names the worker exposes with at least one sample (histograms by base name)."""
    names = set()
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            names.add(base_metric(sample.name))
    return names


def wait_scraped(prom: Prometheus, worker_url: str, timeout_s: float = 15) -> None:
    """Wait until the worker's event counters are final and Prometheus has scraped them."""
    deadline = time.monotonic() + timeout_s
    previous = scraped = None
    while time.monotonic() < deadline:
        text = httpx.get(f"{worker_url}/metrics", timeout=5).text
        total = sum(
            s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
            if s.name == "pulse_events_total"
        )
        scraped = prom.scalar("sum(pulse_events_total)")
        if total > 0 and total == previous and scraped == total:
            return
        previous = total
        time.sleep(1.0)
    raise AssertionError(f"prometheus did not catch up: worker {previous}, prometheus {scraped}")


def settled_answers(
    prom: Prometheus, expressions: list[Any], timeout_s: float = SETTLE_S
) -> list[tuple[Any, dict[str, Any]]]:
    """Every expression's answer, polled until all non-pending ones return data or timeout.

    Series born at window closes (triggers, window records) may appear after the
    last event; a rate() needs two scrapes of them. Waiting for them does not
    excuse missing data: what is still empty at the timeout fails the test.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        answers = [(e, prom.query(e.expr)) for e in expressions]
        waiting = [
            e
            for e, a in answers
            if a.get("status") == "success"
            and not has_data(a)
            and not e.base_metrics & PENDING_METRICS
        ]
        if not waiting or time.monotonic() > deadline:
            return answers
        time.sleep(2.0)


def has_data(answer: dict[str, Any]) -> bool:
    data = answer.get("data") or {}
    if data.get("resultType") == "scalar":
        return True
    return bool(data.get("result"))


async def traffic(settings: Settings, url: str) -> dict[str, Any]:
    """Cost models for the simulated campaigns, one attributed purchase, one unmapped Segment
    event, then the simulation.

    Simulated purchases come 30 s or more after their click, later than this short
    run, so one click → purchase funnel is sent by hand for the purchase and revenue
    series (and one purchase in a currency without a rate, for the unconverted one);
    the cost models give the spend and ROAS series.
    """
    async with EventWriter(settings) as writer:
        await writer.send_many(
            [(cid.encode(), orjson.dumps(body)) for cid, body in CAMPAIGN_SETTINGS.items()],
            settings.topic("campaigns"),
        )
    now = int(time.time() * 1000)
    funnel = [
        {"event_id": "dash-click-1", "type": "click", "event_time": now - 1000,
         "user_id": "dash-user-1", "campaign_id": "cmp-001", "variant_id": "A"},
        {"event_id": "dash-buy-1", "type": "purchase", "event_time": now, "user_id": "dash-user-1",
         "order_id": "dash-order-1", "revenue": 49.9, "currency": "EUR"},
        # no JPY rate on pulse.fx: the unconverted-purchases panel
        {"event_id": "dash-buy-2", "type": "purchase", "event_time": now, "user_id": "dash-user-1",
         "order_id": "dash-order-2", "revenue": 5400, "currency": "JPY"},
    ]  # fmt: skip
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30) as client:
        for event in funnel:  # one request each: the purchase must follow its click
            r = await client.post("/v1/events", content=orjson.dumps(event))
            assert r.status_code == 202 and r.json()["accepted"] == 1, r.text
        # a Segment event with no mapping, for the dropped-events panel
        unmapped = {"type": "track", "event": "Signed Up", "messageId": "dash-seg-1",
                    "userId": "dash-user-2", "timestamp": "2026-01-01T00:00:00Z"}  # fmt: skip
        r = await client.post("/v1/track", content=orjson.dumps(unmapped))
        assert r.status_code == 200 and r.json() == {"success": True}, r.text
    return await run_simulation(
        settings, SIM, via="http", url=url, write_key="test-key", progress=False
    )


def simulate(settings: Settings, url: str) -> dict[str, Any]:
    """Send :func:`traffic` from a thread with its own event loop (no other loop is touched)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, traffic(settings, url)).result()


def test_dashboard_queries_on_real_prometheus(
    request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = prometheus_binary()
    if binary is None:
        pytest.fail(
            "the prometheus binary is missing (not on PATH, no /usr/bin/prometheus): "
            "run `make deps` to install the Debian package"
        )
    expressions = dashboard_expressions()
    assert expressions, "no PromQL expression found in grafana/dashboards"

    t0 = time.monotonic()
    # requested only now, so that a missing binary fails before a broker starts
    make_worker = request.getfixturevalue("make_worker")
    worker_env: dict[str, str] = request.getfixturevalue("worker_env")
    t_setup = time.monotonic()
    worker = make_worker(**WORKER_OVERRIDES)
    t_worker = time.monotonic()
    target = worker.url.removeprefix("http://")

    (tmp_path / "prometheus").mkdir()
    prom = Prometheus(binary, target, tmp_path / "prometheus").start()
    try:
        prom.wait_target_up()
        settings = Settings.from_env(worker_env)
        t_sim = time.monotonic()
        summary = simulate(settings, worker.url)
        t_sent = time.monotonic()
        assert summary["sent"] > 0, summary
        wait_scraped(prom, worker.url)
        exposed = exported_metrics(httpx.get(f"{worker.url}/metrics", timeout=5).text)
        t_scraped = time.monotonic()
        answers = settled_answers(prom, expressions)
    finally:
        prom.stop()
    elapsed = time.monotonic() - t0
    phases = {
        "broker": round(t_setup - t0, 1),
        "worker": round(t_worker - t_setup, 1),
        "prometheus": round(t_sim - t_worker, 1),
        "traffic": round(t_sent - t_sim, 1),
        "catch_up": round(t_scraped - t_sent, 1),
        "queries (until settled)": round(time.monotonic() - t_scraped, 1),
    }

    invalid: list[str] = []
    missing: list[str] = []
    rows: list[dict[str, Any]] = []
    for e, answer in answers:
        pending = sorted(e.base_metrics & PENDING_METRICS)
        ok = answer.get("status") == "success"
        data = has_data(answer)
        if not ok:
            invalid.append(f"{e.describe()}: {e.expr}\n    {answer.get('error')}")
        elif not data and not pending:
            missing.append(f"{e.describe()}: {e.expr}")
        rows.append(
            {
                "dashboard": e.dashboard,
                "panel": e.panel,
                "ref": e.ref,
                "raw": e.raw,
                "expr": e.expr,
                "metrics": sorted(e.base_metrics),
                "pending": pending,
                "status": answer.get("status"),
                "error": answer.get("error"),
                "has_data": data,
                "result_type": (answer.get("data") or {}).get("resultType"),
                "result": (answer.get("data") or {}).get("result"),
            }
        )

    used = {m for e in expressions for m in e.base_metrics}
    stale = sorted(PENDING_METRICS & exposed)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "prometheus": binary,
                "scrape_interval": SCRAPE_INTERVAL,
                "simulation": summary,
                "worker_overrides": WORKER_OVERRIDES,
                "phases_s": phases,
                "exported_metrics": sorted(exposed),
                "pending_metrics": sorted(PENDING_METRICS),
                "pending_now_exported": stale,
                "expressions": rows,
            },
            indent=2,
            default=str,
        )
    )

    with_data = [r for r in rows if r["has_data"]]
    pending_rows = [r for r in rows if r["pending"] and not r["has_data"]]
    lines = [
        f"\nPrometheus dashboard check: {len(rows)} expressions in {elapsed:.1f}s "
        f"({summary['sent']} events sent, {summary['achieved_rate']}/s); "
        f"{len(with_data)} with data, {len(pending_rows)} pending (valid PromQL, no data yet), "
        f"{len(invalid)} invalid, {len(missing)} without data",
        "  phases (s): " + ", ".join(f"{k} {v}" for k, v in phases.items()),
        "  with data:",
        *(f"    {r['dashboard']} / {r['panel']} [{r['ref']}]" for r in with_data),
        "  pending metrics: " + ", ".join(sorted(PENDING_METRICS & used)),
        *(f"    {r['dashboard']} / {r['panel']} [{r['ref']}]" for r in pending_rows),
        f"  results: {RESULTS.relative_to(ROOT)}",
    ]
    with capsys.disabled():
        print("\n".join(lines))

    if stale:
        warnings.warn(
            f"now exported by the worker, remove from PENDING_METRICS: {', '.join(stale)}",
            stacklevel=1,
        )
    assert not invalid, "invalid PromQL (status not success):\n  " + "\n  ".join(invalid)
    assert not missing, (
        "no data for expressions on exported metrics:\n  "
        + "\n  ".join(missing)
        + f"\nworker exports: {sorted(exposed)}"
    )
    unknown = sorted(PENDING_METRICS - used)
    assert not unknown, f"PENDING_METRICS lists metrics no dashboard reads: {unknown}"
