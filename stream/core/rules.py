"""Trigger rules and offer settings as typed, validated objects, parsed once on the way in.

A rules document (``stream/rules.yaml`` or ``PULSE_RULES``) has four sections:
``defaults`` (fields every rule starts from), ``rules`` (name -> :class:`Rule`),
``global`` (:class:`GlobalRules`) and ``user_offer`` (:class:`UserOffer`). Any
unknown key, wrong type (a number written as a string included), value out of
range or unknown metric / direction raises :class:`RulesError`, whose message
names the file, the rule and the field and says what to do. A campaign's
``rules`` override (``pulse.campaigns``) goes through :func:`parse_override`.

>>> doc = {"defaults": {"z": 3.0, "exit_z": 1.0, "min_sample": 200, "baseline_windows": 30,
...        "min_baseline_windows": 5, "cooldown_windows": 5},
...        "rules": {"ctr_drop": {"metric": "ctr", "direction": "down", "min_relative": 0.3,
...                  "action": "campaign.decrease_bid"}}}
>>> rules = parse_rules(doc, "rules.yaml")
>>> rules.rules["ctr_drop"].z, rules.global_.max_triggers_per_minute, rules.user_offer.min_score
(3.0, 60, 0.5)
>>> parse_rules({**doc, "rules": {"ctr_drop": {"metric": "ctrr"}}}, "rules.yaml")
Traceback (most recent call last):
...
stream.core.rules.RulesError: rules file rules.yaml: rule 'ctr_drop', field 'metric': 'ctrr' \
is not one of ctr, cvr. Fix that file (PULSE_RULES names it).
>>> parse_override(rules, {"ctr_drop": {"z": 4}}, "c1")["ctr_drop"].z
4.0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from stream.core.errors import ConfigError

RULES_FILE = Path(__file__).resolve().parents[1] / "rules.yaml"

#: actions a campaign rule may take (PRODUCT.md, "Trigger")
CAMPAIGN_ACTIONS = (
    "campaign.alert",
    "campaign.decrease_bid",
    "campaign.increase_budget",
    "campaign.pace",
    "campaign.pause",
    "campaign.reallocate",
)
SECTIONS = ("defaults", "rules", "global", "user_offer")
#: sections PRODUCT.md describes that this version does not run yet
PLANNED_SECTIONS = ("journeys", "quiet_hours")


class RulesError(ConfigError):
    """A rules file or a campaign's rules override is wrong (exit code 2).

    ``where`` names the file or campaign; ``section`` (``defaults``, ``global``,
    ``user_offer``), ``rule`` and ``field`` say where in it, when known.
    """

    def __init__(
        self,
        where: str,
        problem: str,
        fix: str,
        rule: str | None = None,
        field: str | None = None,
        section: str | None = None,
    ) -> None:
        self.where, self.rule, self.field, self.section = where, rule, field, section
        parts = [
            f"section {section!r}" if section and not rule else "",
            f"rule {rule!r}" if rule else "",
            f"field {field!r}" if field else "",
        ]
        at = ", ".join(p for p in parts if p)
        super().__init__(f"{where}: {at + ': ' if at else ''}{problem}. {fix}")


class _Invalid(ValueError):
    """One value is wrong: the problem, without where it is (the caller adds that)."""


@dataclass(frozen=True, kw_only=True)
class Rule:
    """One campaign trigger rule (see the comments at the top of ``stream/rules.yaml``)."""

    name: str
    metric: Literal["ctr", "cvr"]
    direction: Literal["down", "up"]
    action: str
    z: float
    exit_z: float
    min_relative: float
    min_sample: int
    baseline_windows: int
    min_baseline_windows: int
    cooldown_windows: int
    enabled: bool = True
    params: Mapping[str, Any] = field(default_factory=dict)
    severe_relative: float = 2.0
    severe_action: str | None = None


@dataclass(frozen=True, kw_only=True)
class GlobalRules:
    """The ``global`` section: rails across every rule and campaign."""

    max_triggers_per_minute: int = 60


@dataclass(frozen=True, kw_only=True)
class UserOffer:
    """The ``user_offer`` section: offers from the purchase-propensity model."""

    enabled: bool = True
    min_score: float = 0.5
    min_labels: int = 200
    cap_hours: float = 24.0


@dataclass(frozen=True, kw_only=True)
class Rules:
    """A whole rules document; ``source`` names it in error messages."""

    rules: Mapping[str, Rule] = field(default_factory=dict)
    global_: GlobalRules = field(default_factory=GlobalRules)
    user_offer: UserOffer = field(default_factory=UserOffer)
    source: str = "<rules>"

    @property
    def history_size(self) -> int:
        """Windows of history the engine keeps: the longest baseline of any rule."""
        return max((r.baseline_windows for r in self.rules.values()), default=1)


# -- value checks: each returns the value in its typed form or raises _Invalid ----------


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    return "null" if value is None else f"{type(value).__name__} {value!r}"


def _number(low: float | None = None, high: float | None = None, above: bool = False) -> Any:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            hint = " (write it without quotes)" if isinstance(value, str) else ""
            raise _Invalid(f"must be a number, not {_show(value)}{hint}")
        if not math.isfinite(value):
            raise _Invalid(f"must be a finite number, not {value}")
        if low is not None and (value <= low if above else value < low):
            raise _Invalid(f"must be {'above' if above else 'at least'} {low:g}, not {value:g}")
        if high is not None and value > high:
            raise _Invalid(f"must be at most {high:g}, not {value:g}")
        return float(value)

    return check


def _whole(low: int) -> Any:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            hint = " (write it without quotes)" if isinstance(value, str) else ""
            raise _Invalid(f"must be a whole number, not {_show(value)}{hint}")
        if value < low:
            raise _Invalid(f"must be at least {low}, not {value}")
        return value

    return check


def _choice(options: tuple[str, ...], optional: bool = False) -> Any:
    def check(value: Any) -> str | None:
        if value is None and optional:
            return None
        if value not in options:
            raise _Invalid(f"{value!r} is not one of {', '.join(options)}")
        return str(value)

    return check


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"must be true or false, not {_show(value)}")
    return value


def _params(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _Invalid(f"must be a mapping of names to values, not {_show(value)}")
    return dict(value)


Check = Callable[[Any], Any]
RULE_FIELDS: dict[str, Check] = {
    "metric": _choice(("ctr", "cvr")),
    "direction": _choice(("down", "up")),
    "action": _choice(CAMPAIGN_ACTIONS),
    "z": _number(0, above=True),
    "exit_z": _number(),
    "min_relative": _number(0),
    "min_sample": _whole(0),
    "baseline_windows": _whole(1),
    "min_baseline_windows": _whole(1),
    "cooldown_windows": _whole(0),
    "enabled": _flag,
    "params": _params,
    "severe_relative": _number(0),
    "severe_action": _choice(CAMPAIGN_ACTIONS, optional=True),
}
GLOBAL_FIELDS: dict[str, Check] = {"max_triggers_per_minute": _whole(1)}
OFFER_FIELDS: dict[str, Check] = {
    "enabled": _flag,
    "min_score": _number(0, 1),
    "min_labels": _whole(0),
    "cap_hours": _number(0),
}
_SETTABLE = tuple(f.name for f in fields(Rule) if f.name != "name")
_REQUIRED = tuple(
    f.name
    for f in fields(Rule)
    if f.name != "name" and f.default is MISSING and f.default_factory is MISSING
)


# -- parsing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Where:
    """Where values come from, for messages: a file or a campaign's override."""

    name: str
    fix: str

    def error(
        self,
        problem: str,
        rule: str | None = None,
        field: str | None = None,
        section: str | None = None,
    ) -> RulesError:
        return RulesError(self.name, problem, self.fix, rule, field, section)


def _file(source: str) -> _Where:
    return _Where(f"rules file {source}", "Fix that file (PULSE_RULES names it).")


def _campaign(campaign_id: str) -> _Where:
    return _Where(
        f"campaign {campaign_id!r} settings, 'rules' override",
        f"Correct it with `pulse campaign set {campaign_id} --set 'rules={{...}}'`.",
    )


def _mapping(value: Any, where: _Where, what: str, **at: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise where.error(f"{what} must be a mapping, not {_show(value)}", **at)
    return value


def _checked(
    spec: Mapping[str, Any], checks: Mapping[str, Check], where: _Where, **at: str
) -> dict[str, Any]:
    """``spec`` with each value checked; an unknown key is an error."""
    out = {}
    for key, value in spec.items():
        check = checks.get(key)
        if check is None:
            known = ", ".join(checks)
            raise where.error(f"unknown field; known fields: {known}", field=str(key), **at)
        try:
            out[key] = check(value)
        except _Invalid as exc:
            raise where.error(str(exc), field=key, **at) from None
    return out


def _rule(name: str, values: Mapping[str, Any], where: _Where) -> Rule:
    """A :class:`Rule` from checked values, after the checks across fields."""
    missing = [f for f in _REQUIRED if f not in values]
    if missing:
        raise where.error("missing; set it in the rule or under defaults", name, missing[0])
    rule = Rule(name=name, **values)
    if rule.min_baseline_windows > rule.baseline_windows:
        problem = f"must not exceed baseline_windows ({rule.baseline_windows}): it could never fire"
        raise where.error(problem, name, "min_baseline_windows")
    if rule.exit_z > rule.z:
        problem = f"must not exceed z ({rule.z:g}), or the rule re-arms while it fires; lower it"
        raise where.error(problem, name, "exit_z")
    if rule.direction == "down" and rule.min_relative > 1:
        problem = (
            f"is {rule.min_relative:g}, but a drop is at most 1 (100 %); "
            "write a fraction (0.3 = 30 %)"
        )
        raise where.error(problem, name, "min_relative")
    return rule


def parse_rules(doc: Any, source: str = "<rules>") -> Rules:
    """The typed :class:`Rules` of a loaded rules document (a mapping, as YAML gives it).

    >>> parse_rules({"global": {"max_triggers_per_minute": "60"}}, "r.yaml")
    Traceback (most recent call last):
    ...
    stream.core.rules.RulesError: rules file r.yaml: section 'global', field \
'max_triggers_per_minute': must be a whole number, not the string '60' (write it without \
quotes). Fix that file (PULSE_RULES names it).
    """
    where = _file(source)
    if not isinstance(doc, Mapping) or not doc:
        raise where.error(f"must be a mapping with a rules: section, not {_show(doc)}")
    for key in doc:
        if key in PLANNED_SECTIONS:
            problem = "not supported by this version of Pulse yet; remove the section"
            raise where.error(problem, section=key)
        if key not in SECTIONS:
            known = ", ".join(SECTIONS)
            raise where.error(f"unknown section; known sections: {known}", section=str(key))
    sections = {key: _mapping(doc.get(key), where, key, section=key) for key in SECTIONS}
    defaults = _checked(sections["defaults"], RULE_FIELDS, where, section="defaults")
    rules = {}
    for key, spec in sections["rules"].items():
        name = str(key)
        body = _checked(_mapping(spec, where, "a rule", rule=name), RULE_FIELDS, where, rule=name)
        rules[name] = _rule(name, {**defaults, **body}, where)
    limits = _checked(sections["global"], GLOBAL_FIELDS, where, section="global")
    offer = _checked(sections["user_offer"], OFFER_FIELDS, where, section="user_offer")
    return Rules(
        rules=rules, global_=GlobalRules(**limits), user_offer=UserOffer(**offer), source=source
    )


def read_rules(path: str | Path = RULES_FILE) -> Rules:
    """Parse the YAML rules file at ``path``; any problem is a :class:`RulesError`.

    >>> sorted(read_rules().rules)
    ['ctr_drop', 'ctr_surge', 'cvr_drop']
    """
    import yaml

    where = _file(str(path))
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise where.error(f"cannot be read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise where.error(f"is not valid YAML ({' '.join(str(exc).split())})") from None
    return parse_rules(doc, str(path))


def parse_override(rules: Rules | None, override: Any, campaign_id: str) -> dict[str, Rule]:
    """A campaign's rules: its ``rules`` override merged over ``rules`` (the file's).

    Only the file's rules and their fields may be set. With ``rules`` None (the
    file unknown) only the values are checked, and the result is empty.

    >>> parse_override(read_rules(), {"ctr_drop": {"z": "4"}}, "c1")
    Traceback (most recent call last):
    ...
    stream.core.rules.RulesError: campaign 'c1' settings, 'rules' override: rule 'ctr_drop', \
field 'z': must be a number, not the string '4' (write it without quotes). Correct it with \
`pulse campaign set c1 --set 'rules={...}'`.
    """
    where = _campaign(campaign_id)
    changed = {}
    for key, spec in _mapping(override, where, "the rules override").items():
        name = str(key)
        if rules is not None and name not in rules.rules:
            known = ", ".join(rules.rules) or "none"
            problem = f"unknown rule; the rules file {rules.source} has {known} (PULSE_RULES)"
            raise where.error(problem, name)
        body = _mapping(spec, where, "a rule override", rule=name)
        changed[name] = _checked(body, RULE_FIELDS, where, rule=name)
    if rules is None:
        return {}
    merged = dict(rules.rules)
    for name, values in changed.items():
        base = {f: getattr(merged[name], f) for f in _SETTABLE}
        merged[name] = _rule(name, {**base, **values}, where)
    return merged
