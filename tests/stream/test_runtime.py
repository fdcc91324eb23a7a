"""Runtime.apply_campaign_records: bad pulse.campaigns values are logged and counted."""

from __future__ import annotations

import logging

import pytest

from stream.config import Settings
from stream.runtime import Runtime

REJECTED = "pulse_campaign_settings_rejected_total"


def test_a_bad_override_keeps_the_previous_settings_and_is_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rt = Runtime.offline(Settings.from_env({}))
    registry = rt.metrics.registry
    assert registry.get_sample_value(REJECTED, {"reason": "rules"}) == 0.0  # exported from start
    good = b'{"campaign_id":"c1","cost_model":"cpc","cost":0.5,"rules":{"ctr_drop":{"z":4}}}'
    rt.apply_campaign_records([(b"c1", good)])
    with caplog.at_level(logging.WARNING, logger="stream.runtime"):
        rt.apply_campaign_records([(b"c1", b'{"campaign_id":"c1","rules":{"ctr_drop":{"z":"4"}}}')])
    settings = rt.campaign_settings.get("c1")
    assert settings is not None and settings["rules"] == {"ctr_drop": {"z": 4}}
    assert registry.get_sample_value(REJECTED, {"reason": "rules"}) == 1.0
    assert "'c1'" in caplog.text and "field 'z'" in caplog.text
    # the merge stage reads the same store: it gets the previous settings
    assert rt.merge.campaign_settings("c1") is settings


def test_values_that_are_not_json_or_not_objects_are_counted() -> None:
    rt = Runtime.offline(Settings.from_env({}))
    rt.apply_campaign_records([(b"c1", b"{not json"), (b"c2", b"[1]"), (None, b"{}")])
    registry = rt.metrics.registry
    assert registry.get_sample_value(REJECTED, {"reason": "json"}) == 1.0
    assert registry.get_sample_value(REJECTED, {"reason": "value"}) == 1.0
    assert rt.campaign_settings.get("c1") is None and rt.campaign_settings.get("c2") is None
    rt.apply_campaign_records([(b"c1", b'{"budget": 10}'), (b"c1", None)])  # set, then tombstone
    assert rt.campaign_settings.get("c1") is None
