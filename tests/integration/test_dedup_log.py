"""The dedup log on a real broker: restored by a worker on a fresh data dir, never skipped."""

from __future__ import annotations

import re
import signal
import time

import orjson
import pytest

from tests.integration.helpers import consume_all, produce, topic

pytestmark = [pytest.mark.integration, pytest.mark.kafka4]


def view(event_id: str, user: str) -> tuple[bytes, bytes]:
    e = {
        "event_id": event_id,
        "type": "view",
        "event_time": int(time.time() * 1000),
        "user_id": user,
        "campaign_id": "cmp-1",
    }
    return user.encode(), orjson.dumps(e)


async def test_ids_survive_kill_and_a_fresh_data_dir(make_worker, worker_env, kafka, tmp_path):
    first = make_worker()
    ids = [(f"id-{i:05d}", f"u{i % 50}") for i in range(2_000)]
    await produce(kafka.bootstrap, topic(worker_env, "events"), [view(i, u) for i, u in ids])
    first.wait_metric("pulse_events_total", len(ids))
    log = await consume_all(kafka.bootstrap, f"{worker_env['PULSE_APP_ID']}-dedup-log")
    assert 1 <= len(log) <= 4 * 20, "one record per partition per batch, not one per id"
    time.sleep(2)  # offsets committed (commit interval 1 s)
    first.stop(signal.SIGKILL)

    second = make_worker(PULSE_DATA_DIR=str(tmp_path / "elsewhere"))
    # every id again (re-sent by a tracker), and 10 new ones: only the new ones count
    again = [view(i, u) for i, u in ids] + [view(f"new-{i}", "u1") for i in range(10)]
    await produce(kafka.bootstrap, topic(worker_env, "events"), again)
    second.wait_metric("pulse_events_duplicate_total", len(ids), timeout_s=90)
    second.wait_metric("pulse_events_total", 10)
    time.sleep(2)
    assert second.metric_sum("pulse_events_total") == 10


async def test_a_corrupt_dedup_record_stops_the_restore(make_worker, worker_env, kafka, tmp_path):
    first = make_worker()
    await produce(kafka.bootstrap, topic(worker_env, "events"), [view("a", "u1")])
    first.wait_metric("pulse_events_total", 1)
    first.stop()
    log_topic = f"{worker_env['PULSE_APP_ID']}-dedup-log"
    await produce(kafka.bootstrap, log_topic, [(b"0", b"\x7fnot a dedup record")], partition=0)
    # it stops instead of skipping the record: the process exits with an error, no hang
    with pytest.raises(AssertionError, match=r"exited with code [1-9]"):
        make_worker(PULSE_DATA_DIR=str(tmp_path / "fresh"))
    log = (tmp_path / "worker-1.log").read_text(errors="replace")
    assert re.search(rf"{log_topic} partition 0 offset \d+: ", log), log[-4000:]
