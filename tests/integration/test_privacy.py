"""Privacy on a real broker: pseudonymised ids, truncated IPs, consent, and `pulse erase`.

With PULSE_PSEUDONYMIZE_SALT set, no raw user id reaches the outputs, the
changelogs or the worker log; after `pulse erase --user` the user's last click
is tombstoned and the model forgets them, also across a worker restart.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest

from stream.core.privacy import pseudonymize
from tests.integration.conftest import ROOT
from tests.integration.helpers import consume_all, topic

pytestmark = [pytest.mark.integration, pytest.mark.kafka4]

SALT = "test-salt-7f3a"
AUTH = {"Authorization": "Bearer test-key"}
RULES = ROOT / "stream" / "rules.yaml"
# distinctive raw ids, easy to spot in any byte stream
ALICE, BOB, CAROL, DEVICE = "alice-raw-9d1e", "bob-raw-4c2b", "carol-raw-77aa", "device-raw-5e0f"
RAW_IDS = (ALICE, BOB, CAROL, DEVICE)
FULL_IP = "198.51.100.77"


def pseudo(user: str) -> str:
    return pseudonymize(user, SALT)


def ev(n: str, kind: str, user: str | None, **extra: object) -> dict[str, object]:
    e: dict[str, object] = {"event_id": n, "type": kind, "event_time": int(time.time() * 1000)}
    if user is not None:
        e["user_id"] = user
    if kind != "purchase":
        e["campaign_id"] = "c1"
    else:
        e.update(revenue=10.0, currency="EUR")
    e.update(extra)
    return e


def post(url: str, events: list[dict[str, object]]) -> None:
    r = httpx.post(f"{url}/v1/events", content=orjson.dumps(events), headers=AUTH, timeout=30)
    assert r.status_code == 202 and r.json()["accepted"] == len(events), r.text


def latest(records: list[tuple[bytes | None, bytes]]) -> dict[bytes | None, bytes | None]:
    out: dict[bytes | None, bytes | None] = {}
    for key, value in records:
        out[key] = value
    return out


def erase(env: dict[str, str], user: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", "erase", "--user", user, "--wait", "90"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )


async def changelog(kafka, env: dict[str, str], table: str) -> list[tuple[bytes | None, bytes]]:
    return await consume_all(kafka.bootstrap, f"{env['PULSE_APP_ID']}-{table}-changelog")


def model_blobs(records: list[tuple[bytes | None, bytes]]) -> dict[bytes | None, bytes]:
    return {
        key: base64.b64decode(orjson.loads(value))
        for key, value in latest(records).items()
        if value is not None
    }


def model_users(url: str) -> int:
    """Users held by the propensity models of every partition."""
    models = httpx.get(f"{url}/v1/models", timeout=10).json()["propensity"]
    return sum(m["users"] for m in models.values())


def wait_for(check: Callable[[], bool], timeout_s: float = 90, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} not reached in {timeout_s}s")


async def test_pseudonyms_ip_truncation_consent_and_erase(
    make_worker, worker_env, kafka, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    text = RULES.read_text().replace("min_labels: 200", "min_labels: 0")
    rules.write_text(text.replace("min_score: 0.5", "min_score: 0.0"))  # consent is the only rail
    env = {
        "PULSE_PSEUDONYMIZE_SALT": SALT,
        "PULSE_RULES": str(rules),
        "PULSE_CHECKPOINT_INTERVAL": "0",
        "PULSE_WINDOW": "10s",
        "PULSE_GRACE": "2s",
        "PULSE_LOG_LEVEL": "info",
    }
    worker = make_worker(**env)
    ctx = {"ip": FULL_IP, "user_agent": "test"}
    first = [
        ev("a1", "view", ALICE, context=ctx),
        ev("a2", "click", ALICE, consent={"marketing": True}, context=ctx),
        ev("b1", "click", BOB, consent={"marketing": False}, context=ctx),
        ev("c1", "click", CAROL, consent={"marketing": True}),
        ev("d1", "click", None, anonymous_id=DEVICE, consent={"marketing": True}),
    ]
    post(worker.url, first)
    worker.wait_metric("pulse_events_total", len(first))
    worker.wait_metric("pulse_windows_emitted_total", 1, timeout_s=90)  # idle partitions close

    # --- outputs and changelogs hold pseudonyms, never the raw ids or the full IP ---
    triggers = await consume_all(kafka.bootstrap, topic(worker_env, "triggers"), expected=3)
    offers = [orjson.loads(v) for _, v in triggers]
    targets = {o["target"]["user_id"] for o in offers if o["action"] == "user.send_offer"}
    assert targets == {pseudo(ALICE), pseudo(CAROL), pseudo(DEVICE)}  # not BOB: no consent
    assert (
        worker.metric("pulse_triggers_suppressed_total", rule="user_offer", reason="consent") == 1
    )
    clicks = await changelog(kafka, worker_env, "clicks")
    assert {orjson.loads(k) for k, v in clicks if v} == {pseudo(u) for u in RAW_IDS}
    dumps: dict[str, bytes] = {
        name: b"\n".join(
            (k or b"") + b" " + (v or b"")
            for k, v in await consume_all(kafka.bootstrap, topic(worker_env, name))
        )
        for name in ("triggers", "metrics", "metrics.partials")
    }
    dedup_log = await consume_all(kafka.bootstrap, f"{worker_env['PULSE_APP_ID']}-dedup-log")
    assert dedup_log, "the dedup log holds the batches' event ids"
    dumps["dedup log"] = b"\n".join(v or b"" for _, v in dedup_log)
    for table in ("clicks", "models", "windows"):
        records = await changelog(kafka, worker_env, table)
        blobs = model_blobs(records) if table == "models" else {}
        dumps[table] = b"\n".join([(k or b"") + b" " + (v or b"") for k, v in records])
        dumps[table] += b"".join(blobs.values())  # the model checkpoints themselves
    log = worker.log_path.read_bytes()
    dumps["worker log"] = log
    for where, data in dumps.items():
        for raw in (*RAW_IDS, FULL_IP):
            assert raw.encode() not in data, f"{raw} found in {where}"
    assert pseudo(ALICE).encode() in dumps["models"] and pseudo(ALICE).encode() in dumps["clicks"]
    events = await consume_all(kafka.bootstrap, topic(worker_env, "events"), expected=len(first))
    assert b"198.51.100.0" in b"".join(v for _, v in events)  # the collector wrote it truncated
    assert FULL_IP.encode() not in b"".join(v for _, v in events)

    # --- pulse erase: acknowledged, clicks tombstoned, model checkpoint without the user ---
    users_before = model_users(worker.url)
    assert users_before == len(RAW_IDS)
    started = time.monotonic()
    done = erase(worker.env, ALICE)
    erase_s = time.monotonic() - started
    assert done.returncode == 0, done.stderr + done.stdout
    assert pseudo(ALICE) in done.stdout and "applied" in done.stdout, done.stdout
    for name in ("events", "events.dlq", "triggers"):  # the retention the topics were made with
        assert f"{topic(worker_env, name)} after 7 days" in done.stdout, done.stdout
    print(f"pulse erase took {erase_s:.1f}s end to end: {done.stdout.strip()}")
    clicks = latest(await changelog(kafka, worker_env, "clicks"))
    assert clicks[orjson.dumps(pseudo(ALICE))] is None
    assert clicks[orjson.dumps(pseudo(CAROL))] is not None
    blobs = model_blobs(await changelog(kafka, worker_env, "models"))
    assert not any(pseudo(ALICE).encode() in b for b in blobs.values())
    assert any(pseudo(CAROL).encode() in b for b in blobs.values())
    assert worker.metric("pulse_erasures_total", status="applied") == 1
    ack = await consume_all(kafka.bootstrap, topic(worker_env, "erasures"))
    statuses = [orjson.loads(v).get("status") for k, v in ack if k == pseudo(ALICE).encode()]
    assert statuses == [None, "applied"]  # the request, then the worker's acknowledgement
    assert not any(raw.encode() in (k or b"") + v for k, v in ack for raw in RAW_IDS)

    # --- after a restart the user stays gone: a purchase is no longer attributed ---
    assert worker.stop() == 0
    second = make_worker(**env)
    restored = users_before - 1  # without alice (recovery may finish after /readyz)
    wait_for(lambda: model_users(second.url) == restored, what=f"{restored} users restored")
    purchases = [ev("a9", "purchase", ALICE), ev("c9", "purchase", CAROL)]
    post(second.url, purchases)
    second.wait_metric("pulse_events_total", len(purchases))

    def attributed() -> float:
        return second.metric_sum("pulse_campaign_purchases_total")

    wait_for(lambda: attributed() >= 1, what="carol's purchase attributed")
    time.sleep(2)  # alice's purchase, in the same batch, had its chance too
    assert attributed() == 1  # carol's, by her click; alice's click is gone
    assert second.metric("pulse_events_late_total") == 0  # alice's purchase was not late
    for raw in RAW_IDS:
        assert raw.encode() not in second.log_path.read_bytes()
