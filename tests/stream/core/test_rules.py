"""Typed rules: the shipped file, each kind of bad field, campaign overrides. No broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.core.errors import ConfigError
from stream.core.rules import RULES_FILE, Rules, RulesError, parse_override, read_rules
from stream.core.triggers import TriggerEngine, load_rules

SHIPPED = RULES_FILE.read_text()
W = 60_000


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad-rules.yaml"
    path.write_text(text)
    return path


def test_the_shipped_file_parses_to_typed_rules() -> None:
    rules = load_rules()
    assert isinstance(rules, Rules) and rules == read_rules(RULES_FILE)
    assert list(rules.rules) == ["ctr_drop", "ctr_surge", "cvr_drop"]
    drop = rules.rules["ctr_drop"]
    assert (drop.metric, drop.direction, drop.z, drop.exit_z) == ("ctr", "down", 3.0, 1.0)
    assert (drop.action, drop.severe_action, drop.severe_relative) == (
        "campaign.decrease_bid",
        "campaign.pause",
        0.7,
    )
    assert dict(drop.params) == {"bid_multiplier": 0.8}
    cvr = rules.rules["cvr_drop"]
    assert (cvr.metric, cvr.min_sample, cvr.baseline_windows, cvr.enabled) == ("cvr", 100, 30, True)
    assert (cvr.severe_action, cvr.severe_relative, dict(cvr.params)) == (None, 2.0, {})
    assert rules.global_.max_triggers_per_minute == 60
    offer = rules.user_offer
    assert (offer.enabled, offer.min_score, offer.min_labels, offer.cap_hours) == (
        True,
        0.5,
        200,
        24.0,
    )
    assert rules.history_size == 30


def test_a_minimal_file_takes_the_code_defaults(tmp_path: Path) -> None:
    text = (
        "rules:\n  r:\n    {metric: cvr, direction: up, action: campaign.alert, z: 2, exit_z: 0,\n"
        "     min_relative: 0.1, min_sample: 1, baseline_windows: 3, min_baseline_windows: 3,\n"
        "     cooldown_windows: 0}\n"
    )
    rules = read_rules(write(tmp_path, text))
    assert rules.rules["r"].z == 2.0 and rules.rules["r"].enabled is True
    assert rules.global_.max_triggers_per_minute == 60 and rules.user_offer.min_labels == 200


def swap(old: str, new: str) -> str:
    assert old in SHIPPED, old
    return SHIPPED.replace(old, new, 1)


# (file text, rule or section, field, words the message must contain)
BAD_FILES = {
    "unknown metric": (swap("metric: ctr\n", "metric: ctrr\n"), "ctr_drop", "metric", "ctr, cvr"),
    "unknown direction": (
        swap("direction: up", "direction: sideways"),
        "ctr_surge",
        "direction",
        "down, up",
    ),
    "numeric string": (
        swap("min_relative: 0.3", 'min_relative: "0.3"'),
        "ctr_drop",
        "min_relative",
        "without quotes",
    ),
    "z not above 0": (
        swap("min_relative: 0.5", "min_relative: 0.5\n    z: 0"),
        "ctr_surge",
        "z",
        "above 0",
    ),
    "fractional count": (
        swap("min_sample: 100", "min_sample: 99.5"),
        "cvr_drop",
        "min_sample",
        "whole",
    ),
    "boolean count": (
        swap("min_sample: 100", "min_sample: true"),
        "cvr_drop",
        "min_sample",
        "whole",
    ),
    "negative cooldown": (
        swap("min_sample: 100", "min_sample: 100\n    cooldown_windows: -1"),
        "cvr_drop",
        "cooldown_windows",
        "at least 0",
    ),
    "baseline longer than kept": (
        swap("min_sample: 100", "min_sample: 100\n    min_baseline_windows: 31"),
        "cvr_drop",
        "min_baseline_windows",
        "baseline_windows (30)",
    ),
    "exit_z above z": (
        swap("min_sample: 100", "min_sample: 100\n    exit_z: 3.5"),
        "cvr_drop",
        "exit_z",
        "must not exceed z",
    ),
    "percent for a drop": (
        swap("min_relative: 0.4", "min_relative: 40"),
        "cvr_drop",
        "min_relative",
        "0.3 = 30 %",
    ),
    "unknown action": (
        swap("action: campaign.alert", "action: campaign.alrt"),
        "cvr_drop",
        "action",
        "campaign.alert",
    ),
    "user action on a campaign rule": (
        swap("severe_action: campaign.pause", "severe_action: user.send_offer"),
        "ctr_drop",
        "severe_action",
        "not one of",
    ),
    "flag as a string": (
        swap("min_sample: 100", 'min_sample: 100\n    enabled: "no"'),
        "cvr_drop",
        "enabled",
        "true or false",
    ),
    "params not a mapping": (
        swap("params: {bid_multiplier: 0.8}", "params: [0.8]"),
        "ctr_drop",
        "params",
        "mapping",
    ),
    "unknown field": (
        swap("min_sample: 100", "min_sample: 100\n    threshold: 3"),
        "cvr_drop",
        "threshold",
        "known fields",
    ),
    "missing field": (
        swap("    metric: cvr\n", ""),
        "cvr_drop",
        "metric",
        "under defaults",
    ),
    "not a finite number": (
        swap("min_relative: 0.4", "min_relative: .nan"),
        "cvr_drop",
        "min_relative",
        "finite",
    ),
    "rule not a mapping": (
        swap("  ctr_surge:\n", "  ctr_surge: 3\n  ctr_surge_old:\n"),
        "ctr_surge",
        None,
        "mapping",
    ),
    "bad default": (swap("  z: 3.0", '  z: "3"'), "defaults", "z", "without quotes"),
    "global out of range": (
        swap("max_triggers_per_minute: 60", "max_triggers_per_minute: 0"),
        "global",
        "max_triggers_per_minute",
        "at least 1",
    ),
    "unknown global key": (
        swap("max_triggers_per_minute: 60", "max_triggers: 60"),
        "global",
        "max_triggers",
        "known fields",
    ),
    "offer score above 1": (
        swap("min_score: 0.5", "min_score: 50"),
        "user_offer",
        "min_score",
        "at most 1",
    ),
    "offer typo": (swap("cap_hours: 24", "cap_hour: 24"), "user_offer", "cap_hour", "known fields"),
    "offer labels as text": (
        swap("min_labels: 200", "min_labels: two hundred"),
        "user_offer",
        "min_labels",
        "whole",
    ),
    "unknown section": (SHIPPED + "\nrule: {}\n", "rule", None, "known sections"),
    "planned section": (SHIPPED + "\njourneys: {}\n", "journeys", None, "not supported"),
}


@pytest.mark.parametrize(("text", "at", "field", "words"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_bad_file_names_the_file_rule_and_field(
    tmp_path: Path, text: str, at: str, field: str | None, words: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(RulesError) as info:
        load_rules(path)
    err = info.value
    message = str(err)
    assert isinstance(err, ConfigError) and err.exit_code == 2
    assert str(path) in message and f"{at!r}" in message and words in message, message
    assert (err.rule or err.section) == at and err.field == field
    if field:
        assert f"field {field!r}" in message
    assert message.endswith("Fix that file (PULSE_RULES names it).")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "must be a mapping"),
        ("- a\n- b\n", "must be a mapping"),
        ("rules: {a: [}\n", "not valid YAML"),
    ],
    ids=["empty", "a list", "broken YAML"],
)
def test_a_file_that_is_not_a_rules_document(tmp_path: Path, text: str, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(RulesError, match=words) as info:
        load_rules(path)
    assert str(path) in str(info.value)


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot be read"):
        load_rules(tmp_path / "nope.yaml")


# -- per-campaign overrides ----------------------------------------------------------------


def test_an_override_is_merged_over_the_files_rules() -> None:
    rules = load_rules()
    merged = parse_override(rules, {"ctr_drop": {"z": 4, "params": {"bid_multiplier": 0.5}}}, "c1")
    assert merged["ctr_drop"].z == 4.0 and dict(merged["ctr_drop"].params) == {
        "bid_multiplier": 0.5
    }
    assert merged["ctr_drop"].min_relative == 0.3  # the rest from the file
    assert merged["ctr_surge"] is rules.rules["ctr_surge"]
    assert rules.rules["ctr_drop"].z == 3.0  # the file's rules are untouched
    assert parse_override(rules, None, "c1") == rules.rules == parse_override(rules, {}, "c1")


BAD_OVERRIDES = {
    "numeric string": ({"ctr_drop": {"z": "4"}}, "ctr_drop", "z", "without quotes"),
    "unknown rule": ({"ctr_dorp": {"z": 4}}, "ctr_dorp", None, "ctr_drop, ctr_surge, cvr_drop"),
    "unknown field": ({"ctr_drop": {"zz": 4}}, "ctr_drop", "zz", "known fields"),
    "unknown metric": ({"cvr_drop": {"metric": "ctrr"}}, "cvr_drop", "metric", "ctr, cvr"),
    "z below the file's exit_z": (
        {"ctr_drop": {"z": 0.5}},
        "ctr_drop",
        "exit_z",
        "must not exceed z",
    ),
    "rule not an object": ({"ctr_drop": 4}, "ctr_drop", None, "mapping"),
    "not an object": (["ctr_drop"], None, None, "mapping"),
}


@pytest.mark.parametrize(
    ("override", "rule", "field", "words"), BAD_OVERRIDES.values(), ids=BAD_OVERRIDES.keys()
)
def test_a_bad_override_names_campaign_rule_and_field(override, rule, field, words) -> None:
    with pytest.raises(RulesError) as info:
        parse_override(load_rules(), override, "c1")
    err, message = info.value, str(info.value)
    assert message.startswith("campaign 'c1' settings, 'rules' override") and words in message
    assert (err.rule, err.field) == (rule, field)
    assert "pulse campaign set c1" in message


def test_without_the_file_only_values_are_checked() -> None:
    assert parse_override(None, {"any_rule": {"z": 4}}, "c1") == {}
    with pytest.raises(RulesError, match="'z'"):
        parse_override(None, {"any_rule": {"z": "4"}}, "c1")


def test_the_engine_uses_typed_overrides_and_never_sees_a_type_error() -> None:
    eng = TriggerEngine(load_rules())
    strict = {"rules": {"ctr_drop": {"z": 1000.0}, "ctr_surge": {"enabled": False}}}
    for i in range(6):
        eng.evaluate("c", i * W, (i + 1) * W, 10_000, 300, 0, now_ms=0, settings=strict)
    fired, _ = eng.evaluate("c", 6 * W, 7 * W, 10_000, 40, 0, now_ms=0, settings=strict)
    assert fired == []  # z = 1000 is never reached
    assert eng.rules_for(strict) is eng.rules_for(strict)  # merged once per settings object
    with pytest.raises(RulesError, match="field 'z'"):
        eng.evaluate(
            "c", 7 * W, 8 * W, 1, 1, 0, now_ms=0, settings={"rules": {"ctr_drop": {"z": "4"}}}
        )
