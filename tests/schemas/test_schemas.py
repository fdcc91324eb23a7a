"""The JSON Schema files are valid draft-07 and describe the records Pulse writes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fastjsonschema
import pytest

import schemas
from schemas import SCHEMA_NAMES, load_schema

try:
    from jsonschema import Draft7Validator
except ImportError:  # not a dependency; fastjsonschema is the fallback check
    Draft7Validator = None

DRAFT_07 = "http://json-schema.org/draft-07/schema#"
SCHEMA_DIR = Path(schemas.__file__).parent

# Keywords draft-07 defines (validation, annotations, structure). Anything else in a
# schema position is a typo that validators would silently ignore.
DRAFT_07_KEYWORDS = {
    "$schema", "$id", "$ref", "$comment", "title", "description", "default", "examples",
    "readOnly", "writeOnly", "definitions", "type", "enum", "const", "multipleOf", "maximum",
    "exclusiveMaximum", "minimum", "exclusiveMinimum", "maxLength", "minLength", "pattern",
    "items", "additionalItems", "maxItems", "minItems", "uniqueItems", "contains",
    "maxProperties", "minProperties", "required", "properties", "patternProperties",
    "additionalProperties", "dependencies", "propertyNames", "if", "then", "else", "allOf",
    "anyOf", "oneOf", "not", "format", "contentMediaType", "contentEncoding",
}  # fmt: skip
SUBSCHEMA_MAPS = ("definitions", "properties", "patternProperties", "dependencies")
SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "items")
SUBSCHEMAS = (
    "additionalProperties", "additionalItems", "items", "contains", "propertyNames",
    "if", "then", "else", "not",
)  # fmt: skip


def subschemas(schema: Any, where: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    if not isinstance(schema, dict):
        return
    yield where, schema
    for key in SUBSCHEMA_MAPS:
        for name, sub in schema.get(key, {}).items():
            yield from subschemas(sub, f"{where}/{key}/{name}")
    for key in SUBSCHEMA_LISTS:
        if isinstance(schema.get(key), list):
            for index, sub in enumerate(schema[key]):
                yield from subschemas(sub, f"{where}/{key}/{index}")
    for key in SUBSCHEMAS:
        if isinstance(schema.get(key), dict):
            yield from subschemas(schema[key], f"{where}/{key}")


def validator(name: str) -> Callable[[Any], Any]:
    return fastjsonschema.compile(load_schema(name), use_default=False)


def test_schema_names_match_the_files() -> None:
    files = sorted(path.name for path in SCHEMA_DIR.glob("*.schema.json"))
    assert files == sorted(f"{name}.schema.json" for name in SCHEMA_NAMES)


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_is_valid_draft_07(name: str) -> None:
    schema = load_schema(name)
    assert schema["$schema"] == DRAFT_07
    assert schema["title"]
    assert schema["description"]
    if Draft7Validator is not None:
        Draft7Validator.check_schema(schema)
    fastjsonschema.compile(schema)  # raises JsonSchemaDefinitionException when invalid
    for where, node in subschemas(schema):
        unknown = set(node) - DRAFT_07_KEYWORDS
        assert not unknown, f"{name}.schema.json {where}: unknown keywords {unknown}"


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_files_are_plain_utf8_json(name: str) -> None:
    text = (SCHEMA_DIR / f"{name}.schema.json").read_text(encoding="utf-8")
    assert json.loads(text) == load_schema(name)


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_examples_validate(name: str) -> None:
    examples = load_schema(name)["examples"]
    assert examples
    validate = validator(name)
    for example in examples:
        validate(example)


def test_load_schema_returns_independent_copies() -> None:
    first = load_schema("event")
    first["required"].append("mutated")
    assert "mutated" not in load_schema("event")["required"]


def test_load_schema_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown schema"):
        load_schema("nope")


def test_event_schema_matches_the_contract() -> None:
    schema = load_schema("event")
    props = schema["properties"]
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"event_id", "type", "event_time"}
    assert props["type"]["enum"] == ["view", "click", "add_to_cart", "purchase", "identify"]
    assert props["item_id"]["$ref"] == "#/definitions/identifier"
    assert props["items"]["maxItems"] == 100
    assert props["context"]["properties"]["timezone"]["type"] == "string"
    assert props["channel"]["enum"] == [
        "web", "mobile", "email", "sms", "social", "search", "display",
    ]  # fmt: skip
    assert props["event_id"]["maxLength"] == 64


DLQ_RECORD = {
    "reason": "schema",
    "detail": (
        "data.type must be one of ['view', 'click', 'add_to_cart', 'purchase', 'identify']: "
        "send a supported event type"
    ),
    "payload": '{"event_id": "e1", "type": "hover"}',
    "received_at": 1714564800123,
}
METRICS_RECORD = {
    "campaign_id": "c-1",
    "variant_id": "A",
    "channel": "web",
    "window_start": 1714564800000,
    "window_end": 1714564860000,
    "views": 1000,
    "clicks": 25,
    "carts": 4,
    "purchases": 2,
    "revenue": 99.8,
    "spend": 12.5,
    "ctr": 0.025,
    "cvr": 0.08,
    "roas": 7.984,
}
TRIGGER_RECORD = {
    "trigger_id": "ctr_drop:c-1:1714564800000",
    "action": "campaign.pause",
    "rule": "ctr_drop",
    "target": {"campaign_id": "c-1"},
    "reason": "CTR fell to 0.5% against a 2.5% baseline over 1,000 views.",
    "evidence": {"views": 1000, "clicks": 5, "ctr": 0.005, "baseline": 0.025},
    "params": {},
    "created_at": 1714564861000,
}


OFFER_RECORD = load_schema("offer")["examples"][0]


@pytest.mark.parametrize(
    ("name", "record"),
    [
        ("dlq", DLQ_RECORD),
        *[("dlq", {**DLQ_RECORD, "reason": r}) for r in ("invalid_json", "too_large", "late")],
        ("metrics", METRICS_RECORD),
        ("metrics", {**METRICS_RECORD, "variant_id": None, "spend": None, "roas": None}),
        ("metrics", {**METRICS_RECORD, "views": 0, "ctr": None}),
        ("trigger", TRIGGER_RECORD),
        (
            "trigger",
            {
                **TRIGGER_RECORD,
                "action": "user.send_offer",
                "target": {"user_id": "u-1", "campaign_id": "c-1"},
                "params": {"offer": "10OFF"},
            },
        ),
        ("offer", OFFER_RECORD),
        ("offer", {**OFFER_RECORD, "group": "offer", "converted": False, "revenue": 0}),
    ],
)
def test_sample_record_validates(name: str, record: dict[str, Any]) -> None:
    validator(name)(record)


def _without(record: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != key}


@pytest.mark.parametrize(
    ("name", "record"),
    [
        ("dlq", {**DLQ_RECORD, "reason": "unknown"}),
        ("dlq", _without(DLQ_RECORD, "payload")),
        ("dlq", {**DLQ_RECORD, "received_at": "2024-05-01T12:00:00Z"}),
        ("metrics", _without(METRICS_RECORD, "ctr")),
        ("metrics", {**METRICS_RECORD, "channel": "tv"}),
        ("metrics", {**METRICS_RECORD, "clicks": -1}),
        ("trigger", {**TRIGGER_RECORD, "action": "campaign.delete"}),
        ("trigger", {**TRIGGER_RECORD, "target": {}}),
        ("trigger", {**TRIGGER_RECORD, "action": "user.send_offer"}),  # needs a user_id
        ("trigger", _without(TRIGGER_RECORD, "trigger_id")),
        ("offer", {**OFFER_RECORD, "group": "control"}),
        ("offer", _without(OFFER_RECORD, "converted")),
    ],
)
def test_bad_record_fails(name: str, record: dict[str, Any]) -> None:
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        validator(name)(record)
