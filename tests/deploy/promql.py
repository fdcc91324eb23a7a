"""Every PromQL expression of the Grafana dashboards in ``grafana/dashboards``, ready to evaluate.

Expressions come from panel targets (including the panels nested in collapsed rows)
and from templating variables of type ``query``. Grafana's variables are replaced so
that Prometheus can run the expression as an instant query:

* dashboard variables (``$campaign``, ``${campaign}``, ``${campaign:regex}``,
  ``[[campaign]]``) become ``.*`` (their "All" value); a label matcher that uses
  one with ``=`` / ``!=`` becomes ``=~`` / ``!~`` so that ``.*`` stays a regex;
* ``$__rate_interval`` becomes ``1m``, ``$__interval`` ``15s`` (``$__range`` ``1h``);
* ``label_values(metric{sel}, label)`` evaluates the selector ``metric{sel}``,
  ``label_values(label)`` evaluates ``{label!=""}``, ``query_result(q)`` evaluates ``q``.

>>> substitute('rate(x{campaign_id="$campaign"}[$__rate_interval])', {"campaign"})
'rate(x{campaign_id=~".*"}[1m])'
>>> variable_expression('label_values(pulse_campaign_views_total, campaign_id)', set())
'pulse_campaign_views_total'
>>> sorted(metric_names('histogram_quantile(0.9, sum by (le) (rate(a_bucket{x="y"}[1m])))'))
['a_bucket']
>>> base_metric("pulse_event_lag_seconds_bucket")
'pulse_event_lag_seconds'
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "grafana" / "dashboards"

#: Grafana's built-in variables and the value an instant query uses for each.
BUILTINS: Mapping[str, str] = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
#: What every dashboard variable becomes: Grafana's "All" value for a regex matcher.
ALL_VALUE = ".*"

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

_VAR = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)")
_MATCHER = re.compile(r'(?P<label>[A-Za-z_]\w*)\s*(?P<op>!=|=~|!~|=)\s*"(?P<val>(?:[^"\\]|\\.)*)"')
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:]|\s*\()")
_KEYWORDS = frozenset(
    [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "and",
        "or",
        "unless",
        "inf",
        "nan",
    ]
)


@dataclass(frozen=True)
class Expression:
    """One PromQL expression of a dashboard and the query Prometheus can evaluate for it."""

    dashboard: str  # file name, e.g. "pipeline-health.json"
    panel: str  # panel title, or "variable <name>"
    ref: str  # the target's refId, or the variable's name
    raw: str  # as written in the dashboard
    expr: str  # variables substituted: valid PromQL for an instant query

    @property
    def metrics(self) -> frozenset[str]:
        """Metric names as written (``_bucket`` kept)."""
        return metric_names(self.expr)

    @property
    def base_metrics(self) -> frozenset[str]:
        """Metric names without histogram suffixes."""
        return frozenset(base_metric(m) for m in self.metrics)

    def describe(self) -> str:
        return f"{self.dashboard} / {self.panel} [{self.ref}]"


def dashboard_files(directory: Path = DASHBOARDS) -> list[Path]:
    return sorted(directory.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict):
        raise ValueError(f"{path.name}: a dashboard is a JSON object")
    return doc


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, with the panels nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels") or [])


def variable_names(doc: Mapping[str, Any]) -> set[str]:
    return {v["name"] for v in (doc.get("templating") or {}).get("list", []) if "name" in v}


def substitute(expr: str, variables: Collection[str]) -> str:
    """Replace dashboard ``variables`` by ``.*`` and Grafana's built-ins by fixed durations.

    Raises ``ValueError`` for a variable that is neither (a typo in a dashboard).
    """

    def value(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g is not None)
        if name in BUILTINS:
            return BUILTINS[name]
        if name in variables:
            return ALL_VALUE
        raise ValueError(f"unknown template variable ${name} in {expr!r}")

    def matcher(match: re.Match[str]) -> str:
        val = match["val"]
        uses_var = any(
            next(g for g in m.groups() if g is not None) in variables for m in _VAR.finditer(val)
        )
        op = match["op"]
        if uses_var:
            op = {"=": "=~", "!=": "!~"}.get(op, op)
        return f'{match["label"]}{op}"{_VAR.sub(value, val)}"'

    return _VAR.sub(value, _MATCHER.sub(matcher, expr))


def _split_top_level(args: str) -> list[str]:
    """Split function arguments on commas outside braces, brackets, parentheses and strings."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(args):
        if quote:
            if ch == quote and args[i - 1] != "\\":
                quote = ""
        elif ch in "\"'`":
            quote = ch
        elif ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(args[start:i].strip())
            start = i + 1
    parts.append(args[start:].strip())
    return parts


def variable_expression(query: str, variables: Collection[str]) -> str | None:
    """The PromQL a ``query`` variable runs, or None for one that runs none (``label_names()``)."""
    query = query.strip()
    call = re.fullmatch(r"(\w+)\s*\((.*)\)", query, flags=re.S)
    if call is None:
        return substitute(query, variables)
    func, args = call[1], call[2].strip()
    if func == "label_values":
        parts = _split_top_level(args)
        if len(parts) == 1:
            return f'{{{parts[0]}!=""}}'
        return substitute(", ".join(parts[:-1]), variables)
    if func == "query_result":
        return substitute(args, variables)
    if func == "metrics":
        return f'{{__name__=~"{substitute(args, variables)}"}}'
    if func == "label_names":
        return substitute(args, variables) if args else None
    return substitute(query, variables)


def _variable_query(var: Mapping[str, Any]) -> str:
    query = var.get("query", "")
    if isinstance(query, Mapping):
        query = query.get("query", "")
    return str(query or var.get("definition", ""))


def expressions(path: Path) -> list[Expression]:
    """Every PromQL expression of one dashboard file."""
    doc = load(path)
    variables = variable_names(doc)
    out: list[Expression] = []
    for panel in iter_panels(doc.get("panels") or []):
        for target in panel.get("targets") or []:
            raw = target.get("expr")
            if raw:
                title = panel.get("title") or f"panel {panel.get('id')}"
                ref = target.get("refId", "?")
                out.append(Expression(path.name, title, ref, raw, substitute(raw, variables)))
    for var in (doc.get("templating") or {}).get("list", []):
        if var.get("type") != "query":
            continue
        raw = _variable_query(var)
        expr = variable_expression(raw, variables) if raw else None
        if expr:
            out.append(Expression(path.name, f"variable {var['name']}", var["name"], raw, expr))
    return out


def dashboard_expressions(directory: Path = DASHBOARDS) -> list[Expression]:
    """Every PromQL expression of every dashboard in ``directory``."""
    return [e for path in dashboard_files(directory) for e in expressions(path)]


def metric_names(expr: str) -> frozenset[str]:
    """Metric names an expression selects (identifiers that are not labels, functions
    or keywords; ``{__name__="x"}`` is not resolved)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery windows
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        name = match[1]
        if name.lower() not in _KEYWORDS:
            names.add(name)
    return frozenset(names)


def base_metric(name: str) -> str:
    """``x_bucket`` / ``x_sum`` / ``x_count`` → ``x`` (a histogram's series → its name)."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
