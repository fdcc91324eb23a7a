"""CampaignSettingsStore: bad pulse.campaigns values are rejected, the previous settings kept."""

from __future__ import annotations

from typing import Any

import pytest

from stream.core.campaigns import (
    SETTINGS_REASONS,
    CampaignSettingsStore,
    CampaignView,
    check_settings,
)
from stream.core.triggers import load_rules

GOOD = {"campaign_id": "c1", "cost_model": "cpc", "cost": 0.5, "budget": 100, "variants": ["A"]}

# (value, reason, words in the message)
BAD: dict[str, tuple[Any, str, str]] = {
    "numeric string in a rule": ({"rules": {"ctr_drop": {"z": "4"}}}, "rules", "field 'z'"),
    "unknown rule": ({"rules": {"nope": {"z": 4}}}, "rules", "rule 'nope'"),
    "rules not an object": ({"rules": ["ctr_drop"]}, "rules", "must be a mapping"),
    "unknown cost model": ({"cost_model": "cpa", "cost": 1}, "cost_model", "cpc, cpm"),
    "cost model without cost": ({"cost_model": "cpm"}, "cost", "per 1000 views"),
    "cost without cost model": ({"cost": 1.0}, "cost_model", "needs a cost_model"),
    "cost as text": ({"cost_model": "cpc", "cost": "0.5"}, "cost", "number"),
    "negative budget": ({"budget": -1}, "budget", ">= 0"),
    "budget as a flag": ({"budget": True}, "budget", "number"),
    "variants as text": ({"variants": "A,B"}, "variants", "list of ids"),
    "empty variant": ({"variants": ["A", ""]}, "variants", "list of ids"),
    "another campaign's id": ({"campaign_id": "c2"}, "campaign_id", "record's key"),
    "not an object": ([1, 2], "value", "JSON object"),
}


@pytest.mark.parametrize(("value", "reason", "words"), BAD.values(), ids=BAD.keys())
def test_a_bad_value_is_rejected_and_the_previous_settings_kept(value, reason, words) -> None:
    store, rules = CampaignSettingsStore(), load_rules()
    assert store.apply("c1", GOOD, rules) is None
    rejected = store.apply("c1", value, rules)
    assert rejected is not None and rejected.reason == reason and reason in SETTINGS_REASONS
    assert words in rejected.message and "'c1'" in str(rejected)
    assert store.get("c1") == GOOD
    assert store.apply("c3", value, rules) is not None and store.get("c3") is None  # nothing yet


def test_good_values_tombstones_and_extra_keys() -> None:
    store, rules = CampaignSettingsStore(), load_rules()
    override = {"campaign_id": "c1", "rules": {"ctr_drop": {"z": 4}}, "daily_budget": 5}
    assert store.apply("c1", override, rules) is None
    assert store.get("c1") == override  # kept as written (the API shows it): extra keys too
    assert store.apply("c1", {"budget": None, "cost_model": None}, rules) is None  # null: unset
    assert store.apply("c1", None, rules) is None and store.get("c1") is None  # tombstone


def test_without_the_rules_only_values_are_checked() -> None:
    store = CampaignSettingsStore()
    assert store.apply("c1", {"rules": {"custom_rule": {"z": 4}}}) is None
    rejected = store.apply("c1", {"rules": {"custom_rule": {"z": "4"}}})
    assert rejected is not None and rejected.reason == "rules"
    assert store.get("c1") == {"rules": {"custom_rule": {"z": 4}}}


def test_check_settings_returns_a_copy() -> None:
    value = dict(GOOD)
    checked = check_settings("c1", value, load_rules())
    assert checked == value and checked is not value


def test_the_view_keeps_the_same_span_of_event_time_for_every_series() -> None:
    view = CampaignView(keep=3)
    for ws in range(0, 100, 10):  # a dense channel, and a sparse one every 40
        channels = ["web", "email"] if ws % 40 == 0 else ["web"]
        for channel in channels:
            view.apply(
                {"campaign_id": "c", "channel": channel, "window_start": ws, "window_end": ws + 10}
            )
    assert sorted(view.windows["c"]) == [70, 80, 90]
    assert sorted(view.channels["c"]["web"]) == [70, 80, 90]
    assert sorted(view.channels["c"]["email"]) == [80], "a sparse series keeps no older windows"
