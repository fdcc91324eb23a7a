"""EraseAgent.handle: an erase request in, the tombstones, checkpoint and ack out."""

from __future__ import annotations

import orjson

from agents.erase import EraseAgent
from agents.ingest import IngestAgent
from stream.core.privacy import erase_request
from stream.runtime import Runtime
from tests.agents.conftest import T0, event, sent


def test_erase_drops_the_users_state_and_acks(rt: Runtime) -> None:
    IngestAgent(rt).handle([(b"alice", event("e1", "click", user="alice"), 2, 0, T0)], T0)
    rt.stores["clicks"].put(2, "alice", [T0, "c1", "", "web", 2])
    key, value = erase_request("alice", "", rt.settings.app_id, "r1", T0)
    assert b"alice" not in key.encode() + value  # no raw id on pulse.erasures, salt or not
    agent = EraseAgent(rt)
    sends, status = agent.handle(key.encode(), value, 2, 5)
    assert status == "applied"
    assert sent(sends, "pulse-clicks-changelog") == [(2, b'"alice"', None)]  # a tombstone
    assert [p for p, _, _ in sent(sends, "pulse-models-changelog")] == [2]
    ((p, ack_key, ack),) = sent(sends, "pulse.erasures")
    body = orjson.loads(ack)  # type: ignore[arg-type]
    assert (p, ack_key, body["status"], body["clicks"]) == (2, key.encode(), "applied", [2])
    assert rt.stores["clicks"].get("alice") is None
    assert "alice" not in rt.stage.window_state(2).last_click
    assert [s.topic for s in sends][-1] == "pulse.erasures"  # the ack comes last
    agent.count(status)
    assert rt.metrics.registry.get_sample_value("pulse_erasures_total", {"status": "applied"}) == 1


def test_a_request_with_another_salt_erases_nothing(rt: Runtime) -> None:
    key, value = erase_request("alice", "other-salt", rt.settings.app_id, "r2", T0)
    sends, status = EraseAgent(rt).handle(key.encode(), value, 0, 1)
    assert status == "salt_mismatch"
    assert [s.topic for s in sends] == ["pulse.erasures"]


def test_acknowledgements_and_garbage_are_ignored(rt: Runtime) -> None:
    agent = EraseAgent(rt)
    assert agent.handle(b"alice", b'{"request_id": "r1", "status": "applied"}', 0, 2) == ([], None)
    assert agent.handle(None, b"junk", 0, 3) == ([], None)
