"""Unit tests for stream.core.pipeline: the per-partition stage's DLQ records."""

from __future__ import annotations

import orjson

from stream.core.dedup import Deduplicator
from stream.core.ingest import Ingestor
from stream.core.pipeline import PartitionStage, Pipeline, PipelineConfig
from stream.core.windows import PartitionWindows

T0 = 1_714_564_800_000


def test_late_event_goes_to_the_dlq_with_its_original_key_and_text() -> None:
    stage = PartitionStage(
        Ingestor(Deduplicator(86_400_000), salt="pepper"),  # ids pseudonymised
        lambda: PartitionWindows(60_000, 5_000, 3_600_000),
    )
    on_time = {"event_id": "e1", "type": "view", "event_time": T0 + 120_000, "user_id": "alice",
               "campaign_id": "c1"}  # fmt: skip
    late_text = orjson.dumps({**on_time, "event_id": "e2", "event_time": T0})
    stage.process([(b"alice", orjson.dumps(on_time), 0, 0, T0)], T0)
    stage.close([0])
    out = stage.process([(b"alice", late_text, 0, 1, T0)], T0)
    assert len(out.late) == 1
    key, value = out.late[0]
    record = orjson.loads(value)
    assert key == b"alice"  # the DLQ key is the input's key
    assert record["reason"] == "late" and record["payload"] == late_text.decode()
    assert "PULSE_GRACE" in record["detail"]


def test_restored_windows_keep_the_configured_currency_rates_and_half_life() -> None:
    pipe = Pipeline(PipelineConfig.load(window_ms=60_000, grace_ms=5_000,
                                        attribution_half_life_ms=1_000))  # fmt: skip
    restored = pipe.windows_from_state(pipe.new_windows().to_state())
    assert restored.half_life_ms == 1_000 and restored.fx is pipe.config.fx


def test_a_login_moves_propensity_state_and_sessions_to_the_identity() -> None:
    from stream.kafka.routing import partition_for

    def part(key: bytes) -> int:
        return partition_for(key, 4)

    anon = next(f"a-{n}" for n in range(100) if part(f"a-{n}".encode()) != part(b"u-1"))
    stage = Pipeline(PipelineConfig.load(window_ms=60_000, grace_ms=5_000)).partition_stage()
    offsets: dict[int, int] = {}

    def send(records: list[tuple[bytes | None, bytes]]) -> list[tuple[bytes | None, bytes]]:
        raws = []
        for key, value in records:
            p = part(key or b"")
            offsets[p] = offsets.get(p, -1) + 1
            raws.append((key, value, p, offsets[p], 0))
        return stage.process(raws, None).internal

    def ev(n: int, etype: str, t_s: int, **fields: object) -> tuple[bytes, bytes]:
        e = {"event_id": f"e{n}", "type": etype, "event_time": 1_700_000_000_000 + t_s * 1000,
             "channel": "web", **fields}  # fmt: skip
        return str(e.get("user_id") or e["anonymous_id"]).encode(), orjson.dumps(e)

    internal = send([
        ev(1, "view", 1, anonymous_id=anon, item_id="sku-1"),
        ev(2, "click", 2, anonymous_id=anon, campaign_id="c1", item_id="sku-2"),
        ev(3, "identify", 3, anonymous_id=anon, user_id="u-1"),
    ])  # fmt: skip
    while internal:  # the link notice, then the handover, each to its partition
        internal = send(internal)
    pa, pu = part(anon.encode()), part(b"u-1")
    assert anon not in stage.models[pa].users and anon not in stage.recommenders[pa].users
    model, reco = stage.models[pu], stage.recommenders[pu]
    assert model.users["u-1"][:2] == [1, 1] and model.engaged["u-1"] == {"c1": 1}
    assert [e[0] for e in reco.users["u-1"]] == ["sku-1", "sku-2"]
    assert [e[1] for e in model.pending_users["u-1"]] == ["u-1"]
    labels = model.labels
    send([ev(4, "purchase", 60, user_id="u-1", order_id="o", revenue=5.0, currency="USD")])
    assert model.labels == labels + 1  # the click before login is labelled by the purchase
    body = {"id": anon, "model": {"row": [1, 1, 0, 0.0, 0, 0.0, 0.0, 0.0], "pending": []}}
    model.merge_user("u-1", anon, body["model"])  # a replayed handover changes nothing
    assert model.users["u-1"][:2] == [1, 1]
