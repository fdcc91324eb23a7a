"""plainly_valid never accepts what the event schema rejects, and accepts the common shapes."""

from __future__ import annotations

from typing import Any

import fastjsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import load_schema
from stream.core.fastpath import plainly_valid

SCHEMA = fastjsonschema.compile(load_schema("event"), use_default=False)


def schema_ok(event: dict[str, Any]) -> bool:
    try:
        SCHEMA(event)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-2, max_value=253402300800001),
    st.floats(allow_nan=True),
    st.sampled_from(
        [
            *("", "x", "view", "click", "add_to_cart", "purchase", "identify"),
            *("web", "sms", "eur", "USD", "U$D", "sku-1"),
        ]
    ),
    st.text(max_size=70),
    st.text(min_size=125, max_size=130),
    st.just("2024-05-01T12:00:00Z"),
)
values = st.one_of(
    scalars,
    st.dictionaries(
        st.sampled_from(["marketing", "ip", "utm", "timezone", "item_id", "x"]), scalars, max_size=3
    ),
    st.dictionaries(
        st.sampled_from(["utm", "ip"]),
        st.dictionaries(st.text(max_size=3), scalars, max_size=2),
        max_size=2,
    ),
    st.lists(scalars, max_size=2),
)
FIELDS = [*load_schema("event")["properties"], "unknown"]  # every schema field, and one more
BASE = {"event_id": "e1", "type": "click", "event_time": 1000, "user_id": "u", "campaign_id": "c"}


@settings(max_examples=3000, deadline=None)
@given(
    st.dictionaries(st.sampled_from(FIELDS), values, max_size=8),
    st.sets(st.sampled_from(FIELDS), max_size=4),
)
def test_never_accepts_what_the_schema_rejects(extra: dict[str, Any], drop: set[str]) -> None:
    event = {**BASE, **extra}
    for field in drop:
        event.pop(field, None)
    if plainly_valid(event):
        assert schema_ok(event), event


@pytest.mark.parametrize(
    "event",
    [
        BASE,
        {**BASE, "type": "view", "variant_id": "A", "channel": "email", "sent_at": 1500},
        {
            "event_id": "p",
            "type": "purchase",
            "event_time": 5,
            "anonymous_id": "d",
            "revenue": 9.5,
            "currency": "eur",
            "order_id": "o",
        },
        {
            **BASE,
            "consent": {"marketing": True},
            "context": {"ip": "1.2.3.4", "utm": {"s": "n"}},
            "properties": {"k": [1]},
            "session_id": "s",
        },
    ],
)
def test_accepts_common_shapes(event: dict[str, Any]) -> None:
    assert schema_ok(event)
    assert plainly_valid(event)


@pytest.mark.parametrize(
    "change",
    [
        {"event_time": "2024-05-01T12:00:00Z"},  # strings: the schema checks the format
        {"event_time": True},
        {"type": "purchase"},  # needs revenue and currency
        {"unknown": 1},
        {"revenue": float("nan")},
        {"type": "add_to_cart", "item_id": "sku-1"},  # new types: the schema decides
        {"type": "view", "item_id": "sku-1", "campaign_id": None},
        {"items": [{"item_id": "sku-1"}]},
    ],
)
def test_defers_to_the_schema(change: dict[str, Any]) -> None:
    assert not plainly_valid({**BASE, **change})
