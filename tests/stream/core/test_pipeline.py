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
