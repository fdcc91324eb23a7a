"""IngestAgent.handle: a batch of raw records in, the ordered writes out."""

from __future__ import annotations

import base64
import pickle
from pathlib import Path

import orjson
import pytest

from agents.ingest import IngestAgent
from agents.unreadable import Unreadable
from stream.config import Settings
from stream.core import plainstate
from stream.core.dedup import decode_record
from stream.core.merge import decode_windows
from stream.core.sealing import MAGIC, StateRecordError
from stream.runtime import Runtime
from tests.agents.conftest import T0, event, sent


def test_valid_duplicate_and_invalid_records(rt: Runtime) -> None:
    agent = IngestAgent(rt)
    batch = [
        (b"u1", event("e1"), 0, 0, T0),
        (b"u1", event("e1"), 0, 1, T0),  # a re-sent duplicate
        (b"u2", event("e2", "click", user="u2"), 0, 2, T0),
        (b"u3", b"{not json", 0, 3, T0),
    ]
    out = agent.handle(batch, now_ms=T0)
    assert out.stage is not None and out.stage.result.duplicates == 1
    dlq = sent(out.sends, "pulse.events.dlq")
    assert [orjson.loads(v)["reason"] for _, _, v in dlq] == ["invalid_json"]  # type: ignore[arg-type]
    ((p, key, record),) = sent(out.sends, "pulse-dedup-log")  # one record per partition
    assert (p, key) == (0, b"0") and record.startswith(MAGIC)  # type: ignore[union-attr]
    ids = decode_record(rt.state_key.open(record, "test")).ids  # type: ignore[arg-type]
    assert sorted(ids) == ["e1", "e2"]
    (snapshot,) = sent(out.sends, "pulse-windows-changelog")
    assert snapshot[0] == 0 and orjson.loads(snapshot[2])["last_offset"] == 2  # type: ignore[arg-type]
    # order: DLQ and offers, dedup ids, partials, clicks, then the window snapshot
    topics = [s.topic for s in out.sends if s]
    assert topics.index("pulse-dedup-log") < topics.index("pulse-windows-changelog")
    assert topics.index("pulse-clicks-changelog") < topics.index("pulse-windows-changelog")


def test_a_replayed_batch_counts_nothing_twice(rt: Runtime) -> None:
    agent = IngestAgent(rt)
    batch = [(b"u1", event(f"e{i}", at=T0 + i), 1, i, T0) for i in range(5)]
    agent.handle(batch, now_ms=T0)
    again = agent.handle(batch, now_ms=T0 + 1)  # after a crash before the offsets were acked
    assert again.stage is not None and again.stage.counted == []
    assert sent(again.sends, "pulse-dedup-log") == []


def test_windows_close_into_partials_with_exact_counts(rt: Runtime) -> None:
    agent = IngestAgent(rt)
    views = [(b"u1", event(f"v{i}", at=T0 + i * 100), 2, i, T0) for i in range(7)]
    agent.handle(views, now_ms=T0)
    past = T0 + 60_000 + 5_000 + 1  # window end + grace: the watermark closes the window
    out = agent.handle([(b"u1", event("late-enough", at=past), 2, 7, past)], now_ms=past)
    (partial,) = sent(out.sends, "pulse.metrics.partials")
    body = orjson.loads(partial[2])  # type: ignore[arg-type]
    assert body["partition"] == 2 and body["closed_until"] == past - 5_000  # the watermark
    ((ws, rows),) = decode_windows(body["windows"])
    assert ws == T0 and sum(row[0] for row in rows.values()) == 7  # views


def test_a_failed_batch_goes_to_the_dlq_whole_and_is_counted(rt: Runtime) -> None:
    agent = IngestAgent(rt)
    records = [(b"u1", event("e1"), 0, 0, T0), (None, b"x", 0, 1, T0)]
    send = agent.failed(records, RuntimeError("boom"))
    assert send.topic == "pulse.events.dlq" and len(send.records) == 2
    assert all(orjson.loads(v)["reason"] == "schema" for _, v in send.records)
    assert (
        rt.metrics.registry.get_sample_value("pulse_events_invalid_total", {"reason": "schema"})
        == 2
    )


def test_count_after_delivery(rt: Runtime) -> None:
    agent = IngestAgent(rt)
    out = agent.handle([(b"u1", event("e1"), 0, 0, T0), (b"u1", event("e1"), 0, 1, T0)], T0)
    assert rt.metrics.registry.get_sample_value("pulse_events_duplicate_total") in (None, 0)
    agent.count(out, T0)
    assert rt.metrics.registry.get_sample_value("pulse_events_duplicate_total") == 1


def test_revoked_partitions_are_forgotten(rt: Runtime) -> None:
    agent = IngestAgent(rt)
    agent.handle([(b"u1", event("e1"), 3, 0, T0)], T0)
    rt.processed_offsets[3] = 0
    agent.forget([3])
    assert 3 not in rt.processed_offsets


def test_a_partition_kept_through_a_rebalance_keeps_its_dedup_index(rt: Runtime) -> None:
    """A rebalance revokes every partition; those assigned again keep their ids in memory.

    Dropping them at the revocation (and not restoring them, as they are kept)
    let a re-sent copy of an event seen just before the rebalance count twice.
    """
    agent = IngestAgent(rt)
    agent.handle([(b"u1", event("e1"), 2, 0, T0), (b"u2", event("e2", user="u2"), 3, 0, T0)], T0)
    agent.forget([2, 3])  # revoked: all of them
    agent.keep_dedup({2})  # assigned again: 2 only
    again = agent.handle([(b"u1", event("e1"), 2, 1, T0)], T0)  # a re-sent copy
    assert again.stage is not None and again.stage.result.duplicates == 1
    assert len(rt.stage.ingestor.dedup) == 1  # partition 3's ids went with it


class _Exploit:
    """Unpickling this runs ``os.mkdir(path)``: what a forged checkpoint could do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return os.mkdir, (self.path,)


@pytest.mark.parametrize("key", ["k3y", ""])
def test_a_pickled_model_checkpoint_is_never_unpickled(tmp_path: Path, key: str) -> None:
    env = {"PULSE_STATE_KEY": key} if key else {}
    rt = Runtime.offline(Settings.from_env(env))
    agent = IngestAgent(rt)
    model = rt.stage.new_model
    assert model is not None
    trained = model()
    trained.on_event({"type": "click", "ts": 0, "user_id": "u", "campaign_id": "c"})
    genuine = rt.model_blob(trained)
    target = tmp_path / "pwned"
    exploit = pickle.dumps(_Exploit(str(target)))
    forged = [
        base64.b64encode(exploit).decode(),  # unsealed
        base64.b64encode(rt.state_key.seal(exploit)).decode(),  # sealed with this very key
    ]
    for blob in forged:
        with pytest.raises(Unreadable) as bad:
            agent.restore_windows({0}, [], [], [("0", blob)])
        assert (bad.value.table, bad.value.partition) == ("models", 0)
        assert isinstance(bad.value.cause, StateRecordError)
        assert "could run code" in str(bad.value) or "not sealed" in str(bad.value)
    assert not target.exists(), "a forged checkpoint ran code"
    assert agent.restore_windows({0}, [], [], [("0", genuine)]) == {0}
    assert plainstate.dumps(rt.stage.models[0].to_state()) == plainstate.dumps(trained.to_state())


def test_a_window_snapshot_that_does_not_decode_names_its_table() -> None:
    rt = Runtime.offline(Settings.from_env({}))
    with pytest.raises(Unreadable) as bad:
        IngestAgent(rt).restore_windows({2}, [("2", {"not": "a snapshot"})], [], [])
    assert (bad.value.table, bad.value.partition, bad.value.key) == ("windows", 2, "2")
