"""``pulse campaign set``: the settings body is checked before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.cli import build_parser
from stream.cli.campaign import settings_body
from stream.core.errors import ConfigError
from stream.core.rules import RULES_FILE
from stream.core.triggers import load_rules


def body(*argv: str) -> dict:
    return settings_body(build_parser().parse_args(["campaign", "set", "c1", *argv]), load_rules())


def test_a_good_body() -> None:
    got = body("--cost-model", "cpm", "--cost", "4", "--budget", "100", "--variants", "A, B",
               "--set", 'rules={"ctr_drop": {"z": 4}}', "--set", "daily_budget=20")  # fmt: skip
    assert got == {
        "campaign_id": "c1",
        "cost_model": "cpm",
        "cost": 4.0,
        "budget": 100.0,
        "variants": ["A", "B"],
        "rules": {"ctr_drop": {"z": 4}},
        "daily_budget": 20,
    }


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--set", 'rules={"ctr_drop": {"z": "4"}}'], "rule 'ctr_drop', field 'z'"),
        (["--set", 'rules={"ctr_dorp": {"z": 4}}'], "rule 'ctr_dorp'"),
        (["--set", 'rules={"cvr_drop": {"metric": "ctrr"}}'], "field 'metric'"),
        (["--set", "budget=lots"], "'budget'"),
        (["--set", "cost_model=cpc"], "'cost'"),
        (["--set", "variants=A"], "'variants'"),
        (["--cost-model", "cpc"], "--cost-model needs --cost"),
    ],
    ids=["numeric string", "unknown rule", "unknown metric", "budget", "cost", "variants", "cli"],
)
def test_a_bad_body_is_a_config_error(argv: list[str], words: str) -> None:
    with pytest.raises(ConfigError) as info:
        body(*argv)
    assert words in str(info.value)


def test_the_rules_come_from_pulse_rules(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    custom = tmp_path / "rules.yaml"
    custom.write_text(RULES_FILE.read_text().replace("cvr_drop:", "cvr_fall:"))
    monkeypatch.setenv("PULSE_RULES", str(custom))
    args = build_parser().parse_args(
        ["campaign", "set", "c1", "--set", 'rules={"cvr_fall": {"enabled": false}}']
    )
    assert settings_body(args)["rules"] == {"cvr_fall": {"enabled": False}}
