"""A crash at every write boundary of the commit path, on the real broker: nothing lost or doubled.

One worker after another is armed with one failpoint of
:data:`stream.failpoints.POINTS` (``FAILPOINTS=<name>:<pass>``) while the
seeded stream of ``test_crash`` is produced in chunks: each SIGKILLs itself at
its boundary (checked: exit by SIGKILL and ``failpoint <name> fired`` in its
log) and the next worker, armed with the next point, takes over. At the end a
clean worker drains the rest, and every window record must equal the
reference aggregation, and no trigger may be repeated under a new id. Each
chunk also carries one invalid record: the DLQ must hold each exactly once
(with transactions; at least once with ``PULSE_TRANSACTIONS=false``).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import orjson
import pytest

from stream.config import Settings
from stream.failpoints import POINTS
from tests.integration.helpers import (
    assert_exact,
    campaign_stream,
    consume_all,
    encode_events,
    final_records,
    produce,
    stream_reference,
    topic,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka4]

SEED = 20261202
CHUNKS = 30
ENV = {
    "PULSE_WINDOW": "10s",
    "PULSE_GRACE": "20s",  # events arrive in event-time order: none is late
    "PULSE_ATTRIBUTION_WINDOW": "1h",
    "PULSE_CHECKPOINT_INTERVAL": "1s",  # so that model checkpoints are written too
    "PULSE_BATCH_SIZE": "500",  # several batches per chunk
    "PULSE_LOG_LEVEL": "info",
}
#: the armed pass per point: a later pass where the first may come before any state
ARMED = {name: 1 if name.startswith("merger") else 3 for name in POINTS}


async def test_a_crash_at_every_failpoint_keeps_windows_exact(
    make_worker, worker_env, kafka, tmp_path: Path
) -> None:
    events = campaign_stream(SEED)
    expected = stream_reference(events)
    records = encode_events(events)
    size = -(-len(records) // CHUNKS)
    bad_ids = [f"bad-{i}" for i in range(CHUNKS)]  # one invalid record per chunk
    bad = [(b.encode(), orjson.dumps({"event_id": b, "type": "nope"})) for b in bad_ids]
    chunks = [[*records[i * size : (i + 1) * size], bad[i]] for i in range(CHUNKS)]
    events_topic = topic(dict(worker_env, **ENV), "events")

    fired: list[str] = []
    for name in POINTS:
        try:
            worker = make_worker(**ENV, FAILPOINTS=f"{name}:{ARMED[name]}")
        except AssertionError as exc:  # fired on the replayed backlog, before /readyz was seen
            if "exited with code -9" not in str(exc) or f"failpoint {name} fired" not in str(exc):
                raise
            fired.append(name)
            continue
        assert worker.proc is not None
        for _ in range(120):  # produce until it dies at its point (or wait when all is sent)
            if chunks:
                await produce(kafka.bootstrap, events_topic, chunks.pop(0))
            await asyncio.sleep(1.0)
            if worker.proc.poll() is not None:
                break
        assert worker.proc.poll() == -signal.SIGKILL, f"{name} did not fire:\n{worker.tail()}"
        assert f"failpoint {name} fired" in worker.log_path.read_text(errors="replace")
        fired.append(name)
    assert fired == list(POINTS)

    worker = make_worker(**ENV)  # a clean one drains what is left
    for chunk in chunks:
        await produce(kafka.bootstrap, events_topic, chunk)
    got = await final_records(
        kafka.bootstrap, topic(worker_env, "metrics"), len(expected), timeout_s=180
    )
    dlq = [
        orjson.loads(v)
        for _, v in await consume_all(kafka.bootstrap, topic(worker_env, "events.dlq"))
    ]
    assert {d["reason"] for d in dlq} == {"schema"}, "only the invalid records, none on time"
    in_dlq = sorted(orjson.loads(d["payload"])["event_id"] for d in dlq)
    if Settings.from_env(dict(worker_env, **ENV)).transactions:
        assert in_dlq == sorted(bad_ids), "each invalid record once"
    else:
        assert set(in_dlq) == set(bad_ids), "each invalid record"
    assert_exact(got, expected)
    raw = await consume_all(kafka.bootstrap, topic(worker_env, "triggers"))
    ids = [t["trigger_id"] for t in map(orjson.loads, (v for _, v in raw))]
    assert len(ids) == len(set(ids)), "a trigger was sent twice"
    print(
        f"failpoints fired: {', '.join(fired)}; {len(got)} window records exact, "
        f"{len(dlq)} DLQ records for {CHUNKS} invalid ones, {len(ids)} triggers none repeated"
    )
