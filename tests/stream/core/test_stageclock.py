"""CPU per stage: every stage of a processed batch is charged, and only once per chunk."""

from __future__ import annotations

import orjson

from stream.core.pipeline import CLOSE_ALL, Pipeline, PipelineConfig
from stream.core.stageclock import STAGES, StageClock
from stream.telemetry import PulseMetrics


def _records(n: int) -> list[tuple[bytes, bytes, int, int, int]]:
    out = []
    for i in range(n):
        event = {
            "event_id": f"e{i % (n - 5)}",  # the last five repeat earlier ids
            "type": "click" if i % 5 == 0 else "view",
            "event_time": 1_000 + i,
            "user_id": f"u{i % 50}",
            "campaign_id": f"c{i % 3}",
        }
        out.append((b"k", orjson.dumps(event), i % (n - 5) % 2, i, 2_000))  # copies: same partition
    return out


def test_a_batch_charges_parse_dedup_windows_and_model() -> None:
    clock = StageClock()
    stage = Pipeline(PipelineConfig.load(window_ms=1_000, grace_ms=0)).partition_stage(clock=clock)
    out = stage.process(_records(2_000), now_ms=3_000)
    assert len(out.result.valid) == 1_995 and out.result.duplicates == 5
    spent = clock.seconds()
    assert all(spent[s] > 0 for s in ("parse", "dedup", "windows", "model")), spent
    assert spent["merge"] == spent["state"] == spent["metrics"] == 0
    assert stage.close(range(2), CLOSE_ALL)  # the split passes still count every event


def test_stage_names_are_the_exported_labels() -> None:
    metrics = PulseMetrics()
    with metrics.clock.stage("windows"):
        sum(range(100_000))
    values = {
        s: metrics.registry.get_sample_value("pulse_stage_cpu_seconds_total", {"stage": s})
        for s in STAGES
    }
    assert values["windows"] is not None and values["windows"] > 0
    assert all(v == 0 for s, v in values.items() if s != "windows")
