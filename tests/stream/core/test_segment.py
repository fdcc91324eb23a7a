"""Segment messages -> Pulse events: every mapping rule, Segment's doc examples, properties."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import load_schema
from stream.core.segment import (
    KINDS,
    MAPPING_FILE,
    SEGMENT_MAX_BATCH,
    SEGMENT_MAX_MESSAGE,
    Mapped,
    SegmentMapping,
    load_mapping,
    map_request,
    parse_mapping,
)
from stream.core.validation import Rejection, check_event
from tests.strategies import json_values

RECEIVED = 1_714_564_900_000  # 2024-05-01T12:01:40Z
T0 = "2024-05-01T12:00:00.000Z"
T0_MS = 1_714_564_800_000
MAPPING = load_mapping(None)


def msg(event: str | None = "Promotion Viewed", **over: Any) -> dict[str, Any]:
    """A track message as analytics.js sends it (writeKey already taken out)."""
    m: dict[str, Any] = {
        "type": "track",
        "event": event,
        "messageId": "ajs-next-1714564800000-3f0c2a9e-7d1b-4c55-8a0e-2b9f6d1c4e77",
        "anonymousId": "anon-1",
        "timestamp": T0,
        "properties": {},
        "context": {"library": {"name": "analytics.js", "version": "next-1.84.1"}},
    }
    m.update(over)
    return m


def one(message: dict[str, Any], kind: str = "track", mapping: SegmentMapping = MAPPING) -> Any:
    """The single outcome of one message (in a batch of one for a batch path): its event,
    ('rejected', reason, detail) or ('unmapped', name)."""
    body = {"batch": [message]} if KINDS[kind] == "batch" else message
    out = map_request(body, kind, mapping, RECEIVED)
    assert isinstance(out, Mapped), out
    assert len(out.events) + len(out.rejected) + sum(out.unmapped.values()) == 1
    if out.events:
        return out.events[0]
    if out.rejected:
        index, reason, detail, raw = out.rejected[0]
        assert index == 0 and orjson.loads(raw) == message
        return ("rejected", reason, detail)
    return ("unmapped", *out.unmapped)


def validated(event: dict[str, Any]) -> dict[str, Any]:
    checked = check_event(event, RECEIVED)
    assert not isinstance(checked, Rejection), (checked, event)
    return checked


# --- track events by name --------------------------------------------------------------------

TRACK_CASES = [
    # (event name, properties, expected fields of the Pulse event)
    (
        "Promotion Viewed",
        {"promotion_id": "spring", "creative": "B", "name": "Spring sale", "position": "top"},
        {"type": "view", "campaign_id": "spring", "variant_id": "B"},
    ),
    (
        "Promotion Clicked",
        {"promotion_id": "spring", "creative": "A"},
        {"type": "click", "campaign_id": "spring", "variant_id": "A"},
    ),
    (
        "Product Viewed",
        {"product_id": "sku-9", "campaign_id": "c1", "variant_id": "v2", "name": "Mat"},
        {"type": "view", "campaign_id": "c1", "variant_id": "v2", "item_id": "sku-9"},
    ),
    (
        "Product Clicked",
        {"product_id": "sku-9"},  # outside any campaign: a click of the item
        {"type": "click", "item_id": "sku-9"},
    ),
    (
        "Product Viewed",
        {"sku": "G-32"},  # the spec's other product identifier
        {"type": "view", "item_id": "G-32"},
    ),
    (
        "Product Added",
        {"product_id": 507, "campaign_id": "c1", "quantity": 1, "price": 18.99},
        {"type": "add_to_cart", "campaign_id": "c1", "item_id": "507"},
    ),
    (
        "product_viewed",  # names match ignoring case, "_" and "-"
        {"product_id": "p1"},
        {"type": "view", "item_id": "p1"},
    ),
]


@pytest.mark.parametrize(("name", "props", "expected"), TRACK_CASES)
def test_track_events_map_by_name(name: str, props: dict[str, Any], expected: dict) -> None:
    event = one(msg(name, properties=props))
    assert {k: event.get(k) for k in expected} == expected
    for absent in {"campaign_id", "variant_id", "item_id"} - set(expected):
        assert absent not in event
    validated(event)


def test_envelope_fields() -> None:
    m = msg(
        properties={"promotion_id": "spring"},
        userId="u-42",
        sentAt="2024-05-01T12:00:05.000Z",
    )
    event = one(m)
    assert event["event_id"] == m["messageId"]
    assert event["event_time"] == T0_MS and event["sent_at"] == T0_MS + 5000
    assert event["user_id"] == "u-42" and event["anonymous_id"] == "anon-1"
    checked = validated(event)
    assert checked["ts"] == RECEIVED - 5000  # skew corrected from timestamp and sentAt


@pytest.mark.parametrize(
    ("over", "event_time", "sent_at"),
    [
        ({}, T0_MS, None),
        ({"timestamp": None, "originalTimestamp": "2024-05-01T11:00:00Z"}, T0_MS - 3_600_000, None),
        ({"timestamp": "2024-05-01T14:00:00+02:00"}, T0_MS, None),  # offsets honoured
        ({"timestamp": "2024-05-01T12:00:00"}, T0_MS, None),  # no offset: UTC
        ({"timestamp": "2024-05-01T12:00:00.123456+00:00"}, T0_MS + 123, None),  # python
        ({"timestamp": "2024-5-1T12:00:00.000Z"}, T0_MS, None),  # one-digit month and day
        ({"timestamp": T0_MS}, T0_MS, None),  # epoch ms, Pulse's own form
        ({"sentAt": "2024-05-01T12:00:01Z"}, T0_MS, T0_MS + 1000),
        ({"timestamp": None}, RECEIVED, None),  # none: Segment's receive time, no skew
        ({"timestamp": None, "sentAt": "2024-05-01T12:00:01Z"}, RECEIVED, None),
    ],
)
def test_timestamps(over: dict[str, Any], event_time: int, sent_at: int | None) -> None:
    m = msg(properties={"promotion_id": "c"})
    m.update(over)
    m = {k: v for k, v in m.items() if v is not None}
    event = one(m)
    assert event["event_time"] == event_time
    assert event.get("sent_at") == sent_at
    validated(event)


def test_batch_sent_at_applies_to_messages_without_their_own() -> None:
    own = msg(properties={"promotion_id": "c"}, sentAt="2024-05-01T12:00:09Z")
    bare = msg(properties={"promotion_id": "c"}, messageId="m2")
    out = map_request({"batch": [own, bare], "sentAt": "2024-05-01T12:00:02Z"}, "batch", MAPPING, 0)
    assert isinstance(out, Mapped)
    assert [e["sent_at"] for e in out.events] == [T0_MS + 9000, T0_MS + 2000]


@pytest.mark.parametrize(
    ("props", "context", "campaign", "variant"),
    [
        ({"campaign_id": "a", "promotion_id": "b"}, {"campaign": {"name": "c"}}, "a", None),
        ({"promotion_id": "b"}, {"campaign": {"name": "c"}}, "b", None),
        ({}, {"campaign": {"name": "utm-c", "source": "news"}}, "utm-c", None),
        ({"promotion_id": "b", "variant_id": "v", "creative": "x"}, {}, "b", "v"),
        ({"promotion_id": "b", "creative": "hero.png"}, {}, "b", "hero.png"),
        ({"promotion_id": 17, "creative": 3}, {}, "17", "3"),  # numbers become text
        ({"promotion_id": "", "campaign_id": None}, {"campaign": {"name": "c"}}, "c", None),
    ],
)
def test_campaign_and_variant_precedence(
    props: dict[str, Any], context: dict[str, Any], campaign: str, variant: str | None
) -> None:
    event = one(msg(properties=props, context=context))
    assert event["campaign_id"] == campaign
    assert event.get("variant_id") == variant
    validated(event)


def test_mapped_properties_are_dropped_the_rest_kept() -> None:
    props = {"promotion_id": "p", "creative": "B", "name": "Spring", "position": "top"}
    event = one(msg(properties=props))
    assert event["properties"] == {"name": "Spring", "position": "top"}
    event = one(msg(properties={"promotion_id": "p"}))
    assert "properties" not in event


def test_properties_over_4kb_are_dropped_not_the_event() -> None:
    event = one(msg(properties={"promotion_id": "p", "blob": "x" * 5000}))
    assert event["campaign_id"] == "p" and "properties" not in event
    validated(event)


@pytest.mark.parametrize("name", ["Promotion Viewed", "Product Clicked", "Product Added"])
def test_view_click_or_cart_without_campaign_or_item_is_rejected(name: str) -> None:
    kind, reason, detail = one(msg(name, properties={"name": "nothing to count"}))
    assert (kind, reason) == ("rejected", "schema")
    assert "properties.promotion_id" in detail and "properties.product_id" in detail


# --- purchases ------------------------------------------------------------------------------

ORDER = {  # Segment's e-commerce spec v2 example of Order Completed (abridged)
    "checkout_id": "fksdjfsdjfisjf9sdfjsd9f",
    "order_id": "50314b8e9bcf000000000000",
    "affiliation": "Google Store",
    "total": 27.5,
    "subtotal": 22.5,
    "revenue": 25.0,
    "shipping": 3,
    "tax": 2,
    "discount": 2.5,
    "coupon": "hasbros",
    "currency": "USD",
    "products": [
        {"product_id": "507f1f77bcf86cd799439011", "sku": "45790-32", "price": 19, "quantity": 1},
        {"product_id": "505bd76785ebb509fc183733", "sku": "46493-32", "price": 3, "quantity": 2},
    ],
}


def test_order_completed_is_a_purchase() -> None:
    event = one(msg("Order Completed", properties=copy.deepcopy(ORDER), userId="u-1"))
    assert event["type"] == "purchase"
    assert event["order_id"] == ORDER["order_id"]
    assert event["revenue"] == 25.0 and event["currency"] == "USD"
    assert event["items"] == [
        {"item_id": "507f1f77bcf86cd799439011", "quantity": 1, "price": 19},
        {"item_id": "505bd76785ebb509fc183733", "quantity": 2, "price": 3},
    ]
    assert "item_id" not in event and "campaign_id" not in event  # attributed by Pulse
    assert set(event["properties"]) == {
        "checkout_id", "affiliation", "subtotal", "shipping", "tax", "discount", "coupon",
    }  # fmt: skip
    validated(event)


@pytest.mark.parametrize(
    ("props", "revenue", "currency"),
    [
        ({"revenue": 10, "total": 12, "currency": "eur"}, 10, "EUR"),
        ({"total": 12}, 12, "USD"),  # total when no revenue; the YAML's default currency
        ({"revenue": "49.90"}, 49.9, "USD"),  # a numeric string
        (
            {
                "products": [
                    {"product_id": "a", "price": 2.5, "quantity": 2},
                    {"sku": "b", "price": 1},
                ]
            },
            6.0,
            "USD",
        ),
        ({"revenue": 0, "promotion_id": "spring", "creative": "B"}, 0, "USD"),
    ],
)
def test_purchase_revenue_and_currency(
    props: dict[str, Any], revenue: float, currency: str
) -> None:
    event = one(msg("Order Completed", properties=props))
    assert (event["revenue"], event["currency"]) == (revenue, currency)
    validated(event)


def test_purchase_keeps_its_campaign_for_the_window() -> None:
    event = one(msg("Order Completed", properties={"revenue": 5, "campaign_id": "c9"}))
    assert event["campaign_id"] == "c9"


@pytest.mark.parametrize(
    "props",
    [
        {},  # no value at all
        {"revenue": -1},
        {"revenue": "lots"},
        {"revenue": True},
        {"revenue": 5, "currency": "dollars"},
        {"products": [{"product_id": "a", "quantity": 1}]},  # a product without a price
    ],
)
def test_purchase_without_a_usable_value_is_rejected(props: dict[str, Any]) -> None:
    kind, reason, _ = one(msg("Order Completed", properties=props))
    assert (kind, reason) == ("rejected", "schema")


def test_products_become_at_most_100_items() -> None:
    products = [{"product_id": f"p{i}", "quantity": 1, "price": 1} for i in range(150)]
    products.insert(0, {"name": "no id"})
    products.insert(1, "not an object")
    products.insert(2, {"product_id": "q", "quantity": 0, "price": -2})  # bad: 1, no price
    event = one(msg("Order Completed", properties={"revenue": 1, "products": products}))
    assert len(event["items"]) == 100
    assert event["items"][0] == {"item_id": "q", "quantity": 1}
    assert event["items"][1] == {"item_id": "p0", "quantity": 1, "price": 1}
    validated(event)


# --- channel, consent, context ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("medium", "library", "channel"),
    [
        ("email", "analytics.js", "email"),
        ("EMAIL", None, "email"),
        ("sms", None, "sms"),
        ("social", None, "social"),
        ("paid-social", None, "social"),
        ("cpc", None, "search"),
        ("ppc", None, "search"),
        ("paidsearch", None, "search"),
        ("display", None, "display"),
        ("banner", None, "display"),
        ("cpm", None, "display"),
        ("referral", "analytics-ios", "mobile"),  # unknown medium: the library decides
        (None, "analytics.js", "web"),
        (None, "@segment/analytics-node", "web"),
        (None, "analytics-python", "web"),
        (None, "analytics-android", "mobile"),
        (None, "analytics-react-native", "mobile"),
        (None, "analytics-flutter", "mobile"),
        (None, "analytics-kotlin", "mobile"),
        (None, "analytics-swift", "mobile"),
        (None, "something-else", "web"),
        (None, None, "web"),
    ],
)
def test_channel(medium: str | None, library: str | None, channel: str) -> None:
    context: dict[str, Any] = {}
    if medium is not None:
        context["campaign"] = {"medium": medium}
    if library is not None:
        context["library"] = {"name": library, "version": "1"}
    event = one(msg(properties={"promotion_id": "c"}, context=context))
    assert event["channel"] == channel
    validated(event)


@pytest.mark.parametrize(
    ("prefs", "consent"),
    [
        ({"Advertising": True, "Analytics": False}, {"marketing": True}),
        ({"Advertising": False, "Analytics": True}, {"marketing": False}),
        ({"marketing": True, "advertising": False}, {"marketing": False}),  # a refusal wins
        ({"Marketing": True}, {"marketing": True}),
        ({"C0004": True, "C0002": False}, {"marketing": True}),  # OneTrust's targeting id
        ({"Analytics": True}, None),  # no marketing category: not known
        ({"Advertising": "yes"}, None),  # not a boolean: ignored
        ("all", None),
    ],
)
def test_consent(prefs: Any, consent: dict[str, bool] | None) -> None:
    context = {"consent": {"categoryPreferences": prefs}}
    event = one(msg(properties={"promotion_id": "c"}, context=context))
    assert event.get("consent") == consent
    validated(event)


def test_context_fields() -> None:
    context = {
        "ip": "203.0.113.9",
        "userAgent": "Mozilla/5.0",
        "locale": "de-DE",
        "timezone": "Europe/Berlin",
        "page": {"url": "https://shop.example/p/9", "title": "Mat", "path": "/p/9"},
        "campaign": {
            "name": "spring",
            "source": "news",
            "medium": "email",
            "term": "mat",
            "content": "hero",
            "extra": "x",
        },
        "library": {"name": "analytics.js", "version": "1"},
        "device": {"type": "phone"},
    }
    event = one(msg(properties={}, context=context))
    assert event["context"] == {
        "ip": "203.0.113.9",
        "user_agent": "Mozilla/5.0",
        "locale": "de-DE",
        "timezone": "Europe/Berlin",
        "page_url": "https://shop.example/p/9",
        "utm": {
            "name": "spring",
            "source": "news",
            "medium": "email",
            "term": "mat",
            "content": "hero",
        },
    }
    assert event["campaign_id"] == "spring" and event["channel"] == "email"
    checked = validated(event)
    assert checked["context"]["ip"] != "203.0.113.9"  # truncated by Pulse's privacy rule


def test_batch_context_is_merged_under_each_message() -> None:
    body = {
        "batch": [
            msg(properties={"promotion_id": "c"}, context={"locale": "fr-FR"}),
            msg(properties={"promotion_id": "c"}, messageId="m2", context=None),
        ],
        "context": {"locale": "en-US", "campaign": {"medium": "sms"}},
    }
    out = map_request(body, "b", MAPPING, 0)
    assert isinstance(out, Mapped)
    assert [e["context"]["locale"] for e in out.events] == ["fr-FR", "en-US"]
    assert [e["channel"] for e in out.events] == ["sms", "sms"]


# --- identify, alias, page, screen, group ------------------------------------------------------


def test_identify_links_anonymous_and_user_ids() -> None:
    m = {"type": "identify", "messageId": "i1", "userId": "u-42", "anonymousId": "anon-1",
         "traits": {"email": "x@example.com"}, "timestamp": T0}  # fmt: skip
    event = one(m, "identify")
    assert {k: event[k] for k in ("type", "user_id", "anonymous_id")} == {
        "type": "identify",
        "user_id": "u-42",
        "anonymous_id": "anon-1",
    }
    assert "traits" not in event and "properties" not in event
    validated(event)


def test_identify_without_user_id_links_nothing() -> None:
    m = {"type": "identify", "messageId": "i1", "anonymousId": "anon-1", "traits": {"a": 1}}
    assert one(m, "i") == ("unmapped", "identify")


def test_alias_is_an_identify_with_previous_id() -> None:
    m = {"type": "alias", "messageId": "a1", "userId": "u-42", "previousId": "anon-1",
         "timestamp": T0}  # fmt: skip
    event = one(m, "alias")
    assert (event["type"], event["user_id"], event["previous_id"]) == ("identify", "u-42", "anon-1")
    validated(event)
    kind, reason, detail = one({**m, "previousId": None}, "a")
    assert (kind, reason) == ("rejected", "schema") and "previousId" in detail


def test_page_screen_and_group_are_unmapped_by_default() -> None:
    page = {"type": "page", "messageId": "p1", "anonymousId": "a", "name": "Home",
            "properties": {"url": "https://shop.example/", "product_id": "p9"}}  # fmt: skip
    assert one(page, "page") == ("unmapped", "page")
    assert one({**page, "type": "screen"}, "s") == ("unmapped", "screen")
    assert one({**page, "type": "group", "groupId": "g"}, "batch") == ("unmapped", "group")


def test_page_maps_to_a_view_when_the_yaml_says_so() -> None:
    mapping = parse_mapping({**_default_doc(), "page": "view", "screen": "view"}, "m.yaml")
    page = {"type": "page", "messageId": "p1", "anonymousId": "a", "name": "Product",
            "properties": {"product_id": "p9", "title": "Mat"}}  # fmt: skip
    event = one(page, "p", mapping)
    assert (event["type"], event["item_id"]) == ("view", "p9")
    assert event["properties"] == {"title": "Mat"}
    validated(event)
    bare = {**page, "properties": {"url": "https://shop.example/"}}
    assert one(bare, "p", mapping) == ("unmapped", "page")  # neither campaign nor item
    assert one({**page, "type": "screen"}, "screen", mapping)["type"] == "view"


def test_unmapped_track_names_are_counted_by_name() -> None:
    body = {"batch": [msg("Signed Up", messageId=f"m{i}") for i in range(3)]}
    body["batch"].append(msg("Order Updated", messageId="m9"))
    out = map_request(body, "batch", MAPPING, 0)
    assert isinstance(out, Mapped)
    assert out.unmapped == {"Signed Up": 3, "Order Updated": 1}
    assert not out.events and not out.rejected


# --- not Segment messages, limits ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "needle"),
    [
        ({**msg(), "messageId": None}, "messageId"),
        ({**msg(), "messageId": ""}, "messageId"),
        ({**msg(), "messageId": {"id": 1}}, "messageId"),
        ({**msg(), "anonymousId": None}, "userId nor anonymousId"),
        ({**msg(), "userId": ["u"]}, "userId"),
        ({**msg(), "event": None}, "event name"),
        ({**msg(), "event": "  "}, "event name"),
        ({**msg(), "timestamp": "yesterday"}, "timestamp"),
        ({**msg(), "timestamp": -5}, "timestamp"),
        ({**msg(), "sentAt": "soon"}, "sentAt"),
    ],
)
def test_not_a_segment_message_is_rejected_as_schema(message: dict[str, Any], needle: str) -> None:
    kind, reason, detail = one(message)
    assert (kind, reason) == ("rejected", "schema")
    assert needle in detail


def test_batch_items_that_are_not_messages() -> None:
    body = {"batch": [1, "x", None, [msg()], {**msg(), "type": "hover"}, {**msg(), "type": None}]}
    out = map_request(body, "batch", MAPPING, 0)
    assert isinstance(out, Mapped)
    assert [(i, r) for i, r, _, _ in out.rejected] == [(i, "schema") for i in range(6)]
    assert "batch[4]" in out.rejected[4][2] and "hover" in out.rejected[4][2]


def test_a_long_message_id_becomes_a_stable_short_one() -> None:
    long_id = "x" * 99  # Segment allows up to 100 characters
    a = one(msg(properties={"promotion_id": "c"}, messageId=long_id))
    b = one(msg(properties={"promotion_id": "c"}, messageId=long_id))
    assert a["event_id"] == b["event_id"] and len(a["event_id"]) <= 64
    assert a["event_id"].startswith("seg-")


def test_a_write_key_in_a_message_is_never_copied() -> None:
    """analytics.js's batches repeat ``writeKey`` in every message."""
    good = msg(properties={"promotion_id": "c"}, writeKey="wk_secret")
    bad = msg(messageId=None, writeKey="wk_secret")
    out = map_request({"batch": [good, bad]}, "b", MAPPING, 0)
    assert isinstance(out, Mapped) and len(out.events) == 1 and len(out.rejected) == 1
    assert b"wk_secret" not in orjson.dumps(out.events) + out.rejected[0][3]


def test_message_over_32kb_is_too_large() -> None:
    big = msg(properties={"promotion_id": "c", "blob": "x" * SEGMENT_MAX_MESSAGE})
    small = msg(properties={"promotion_id": "c"}, messageId="m2")
    out = map_request({"batch": [big, small]}, "batch", MAPPING, 0)
    assert isinstance(out, Mapped)
    assert [(i, r) for i, r, _, _ in out.rejected] == [(0, "too_large")]
    assert orjson.loads(out.rejected[0][3]) == big
    assert str(SEGMENT_MAX_MESSAGE) in out.rejected[0][2]
    assert len(out.events) == 1
    assert SEGMENT_MAX_BATCH == 500 * 1024


@pytest.mark.parametrize(
    ("body", "kind", "needle"),
    [
        ({"event": "x"}, "batch", "batch array"),
        ({"batch": {"type": "track"}}, "b", "batch array"),
        ([msg()], "batch", "got an array"),
        ([msg()], "track", "one JSON object"),
        ("text", "t", "got a string"),
        (None, "identify", "got null"),
        (msg(), "group", "unknown Segment path"),
    ],
)
def test_not_a_segment_request_is_an_error_text(body: Any, kind: str, needle: str) -> None:
    out = map_request(body, kind, MAPPING, 0)
    assert isinstance(out, str) and needle in out


def test_kinds() -> None:
    assert {k: v for k, v in KINDS.items() if len(k) == 1} == {
        "t": "track", "p": "page", "s": "screen", "i": "identify", "a": "alias", "b": "batch",
    }  # fmt: skip
    assert all(KINDS[v] == v for v in KINDS.values())


def test_single_call_path_decides_the_call() -> None:
    """analytics.js posts each call to its first letter; the path, not the body, decides."""
    m = {k: v for k, v in msg(properties={"promotion_id": "c"}).items() if k != "type"}
    assert one(m, "t")["type"] == "view"


def test_empty_batch() -> None:
    assert map_request({"batch": []}, "batch", MAPPING, 0) == Mapped()


# --- Segment's own doc examples (HTTP Tracking API page) --------------------------------------
# They carry no messageId (Segment's servers add one); Pulse needs it as the
# idempotency key, so as written they are rejected, and with one they map.

DOC_TRACK = {
    "userId": "019mr8mf4r",
    "event": "Item Purchased",
    "properties": {"name": "Leap to Conclusions Mat", "revenue": 14.99},
    "context": {"ip": "24.5.68.47"},
    "timestamp": "2012-12-02T00:30:12.984Z",
}
DOC_IDENTIFY = {
    "userId": "019mr8mf4r",
    "traits": {"email": "pgibbons@example.com", "name": "Peter Gibbons", "industry": "Technology"},
    "context": {"ip": "24.5.68.47"},
    "timestamp": "2012-12-02T00:30:08.276Z",
    "integrations": {"All": False, "Mixpanel": True},
}
DOC_PAGE = {"userId": "019mr8mf4r", "name": "Tracking HTTP API",
            "timestamp": "2012-12-02T00:31:29.738Z"}  # fmt: skip
DOC_ALIAS = {"previousId": "39239-239239-239239-23923", "userId": "019mr8mf4r",
             "timestamp": "2012-12-02T00:31:29.738Z"}  # fmt: skip
DOC_BATCH = {
    "batch": [
        {"type": "identify", "userId": "019mr8mf4r",
         "traits": {"email": "jake@yahoo.com", "name": "Jake Peterson", "age": 26},
         "timestamp": "2012-12-02T00:30:08.276Z"},
        {"type": "track", "userId": "019mr8mf4r", "event": "Song Played",
         "properties": {"name": "Fallin for You", "artist": "Dierks Bentley"},
         "timestamp": "2012-12-02T00:30:12.984Z"},
        {"type": "identify", "userId": "971mj8mk7p",
         "traits": {"email": "cindy@example.com", "name": "Cindy Gonzalez", "age": 23},
         "timestamp": "2015-2-02T00:30:08.276Z"},
        {"type": "track", "userId": "971mj8mk7p", "event": "Song Played",
         "properties": {"name": "Get Right", "artist": "Jennifer Lopez"},
         "timestamp": "2015-2-02T00:30:12.984Z"},
    ],
    "context": {"device": {"type": "phone", "name": "Apple iPhone 6"}},
}  # fmt: skip


@pytest.mark.parametrize(
    ("body", "kind"),
    [(DOC_TRACK, "track"), (DOC_IDENTIFY, "identify"), (DOC_PAGE, "page"), (DOC_ALIAS, "alias")],
)
def test_doc_examples_without_message_id_are_rejected(body: dict[str, Any], kind: str) -> None:
    kind_, reason, detail = one(body, kind)
    assert (kind_, reason) == ("rejected", "schema") and "messageId" in detail


def test_doc_examples_with_message_ids() -> None:
    assert one({**DOC_TRACK, "messageId": "m1"}) == ("unmapped", "Item Purchased")
    event = one({**DOC_IDENTIFY, "messageId": "m2"}, "identify")
    assert event["type"] == "identify" and event["user_id"] == "019mr8mf4r"
    assert event["context"] == {"ip": "24.5.68.47"}
    validated(event)
    assert one({**DOC_PAGE, "messageId": "m3"}, "page") == ("unmapped", "page")
    event = one({**DOC_ALIAS, "messageId": "m4"}, "alias")
    assert event["previous_id"] == "39239-239239-239239-23923"
    validated(event)
    batch = copy.deepcopy(DOC_BATCH)
    for i, m in enumerate(batch["batch"]):
        m["messageId"] = f"b{i}"
    out = map_request(batch, "batch", MAPPING, RECEIVED)
    assert isinstance(out, Mapped)
    assert out.unmapped == {"Song Played": 2} and not out.rejected
    assert [(e["user_id"], e["event_time"]) for e in out.events] == [
        ("019mr8mf4r", 1_354_408_208_276),
        ("971mj8mk7p", 1_422_837_008_276),  # "2015-2-02T00:30:08.276Z", as the docs write it
    ]
    for event in out.events:
        validated(event)


# --- the mapping file -------------------------------------------------------------------------


def _default_doc() -> dict[str, Any]:
    import yaml

    return yaml.safe_load(MAPPING_FILE.read_text())


def test_default_mapping_matches_the_contract() -> None:
    assert dict(MAPPING.track) == {
        "Promotion Viewed": "view",
        "Product Viewed": "view",
        "Promotion Clicked": "click",
        "Product Clicked": "click",
        "Product Added": "add_to_cart",
        "Order Completed": "purchase",
    }
    assert MAPPING.default_currency == "USD" and MAPPING.page is None and MAPPING.screen is None
    assert MAPPING.campaign_fields == (
        ("properties", "campaign_id"),
        ("properties", "promotion_id"),
        ("context", "campaign", "name"),
    )


def test_override_file_merges_over_the_default(tmp_path: Path) -> None:
    path = tmp_path / "segment.yaml"
    path.write_text(
        "track:\n  Checkout Started: add_to_cart\n  Product Viewed: null\n"
        "default_currency: eur\nchannel:\n  medium:\n    push: mobile\n"
    )
    mapping = load_mapping(str(path))
    assert mapping.source == str(path)
    assert mapping.track_type("Checkout Started") == "add_to_cart"
    assert mapping.track_type("Product Viewed") is None  # unmapped by the override
    assert mapping.track_type("Order Completed") == "purchase"  # default kept
    assert mapping.default_currency == "EUR"
    assert (
        mapping.medium_channels["push"] == "mobile" and mapping.medium_channels["cpc"] == "search"
    )
    assert one(msg("Product Viewed", properties={"product_id": "p"}), mapping=mapping) == (
        "unmapped",
        "Product Viewed",
    )


@pytest.mark.parametrize(
    ("text", "key", "fix"),
    [
        ("track:\n  Product Viewed: veiw\n", "track.Product Viewed", "use one of view, click"),
        ("trak: {}\n", "trak", "use track"),
        ("default_currency: dollars\n", "default_currency", "write e.g. USD"),
        ("page: click\n", "page", "use view, or null"),
        ("channel:\n  medium:\n    email: inbox\n", "channel.medium.email", "use one of web"),
        ("channel:\n  default: tv\n", "channel.default", "use one of web"),
        ("fields:\n  campaign_id: [properties.]\n", "fields.campaign_id", "dotted paths"),
        ("fields:\n  segment: [a]\n", "fields.segment", "use campaign_id"),
        ("consent:\n  marketing_categories: yes\n", "consent.marketing_categories", "list"),
        ("- a\n- b\n", None, "write a mapping of keys"),
        ("track: [\n", None, "not valid YAML"),
    ],
)
def test_bad_mapping_file_names_file_key_and_fix(
    tmp_path: Path, text: str, key: str | None, fix: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        load_mapping(str(path))
    message = str(err.value)
    assert str(path) in message and fix in message
    if key is not None:
        assert repr(key) in message


def test_missing_mapping_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be read"):
        load_mapping(str(tmp_path / "nope.yaml"))


# --- properties -------------------------------------------------------------------------------

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
kinds = st.sampled_from(sorted(KINDS))


@PROPS
@given(body=json_values, kind=kinds)
def test_never_raises_on_arbitrary_json(body: Any, kind: str) -> None:
    out = map_request(body, kind, MAPPING, RECEIVED)
    assert isinstance(out, Mapped | str)


PROPERTY_KEYS = ["promotion_id", "campaign_id", "variant_id", "product_id", "sku", "creative",
                 "revenue", "total", "currency", "products", "order_id", "other"]  # fmt: skip
CONTEXT_KEYS = ["ip", "campaign", "library", "consent", "page", "timezone", "userAgent"]
small = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-5, max_value=2_000_000)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
    | st.sampled_from(["usd", "EUR", "49.90", "email", "cpc", "analytics-ios", "x" * 130])
)
products = st.lists(
    st.dictionaries(st.sampled_from(["product_id", "sku", "price", "quantity", "name"]), small),
    max_size=4,
)
context_values = st.dictionaries(
    st.sampled_from(["name", "medium", "url", "categoryPreferences", "Advertising", "source"]),
    small | st.dictionaries(st.sampled_from(["Advertising", "Marketing", "x"]), small),
)
#: Mostly-valid Segment messages with noise in every field: many become events.
plausible = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["track"] * 5 + ["page", "screen", "identify", "alias", "group"]),
        "event": st.sampled_from([*MAPPING.track, "Signed Up"]),
        "messageId": st.text(min_size=1, max_size=70),
        "timestamp": st.sampled_from([T0, "2024-5-1T1:2:3Z", T0_MS, "2024-05-01T14:00:00+02:00"]),
        "anonymousId": st.text(max_size=5),
    },
    optional={
        "userId": st.text(max_size=5) | st.integers(),
        "previousId": st.text(max_size=5),
        "sentAt": st.sampled_from([T0, "2024-05-01T12:00:01+02:00"]),
        "properties": st.dictionaries(st.sampled_from(PROPERTY_KEYS), small | products),
        "context": st.dictionaries(st.sampled_from(CONTEXT_KEYS), small | context_values),
    },
)
#: Anything in any field.
noisy = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["track", "page", "screen", "identify", "alias", "group", "x"]),
        "event": st.sampled_from([*MAPPING.track, "Signed Up", ""]) | json_values,
        "messageId": st.text(max_size=70) | json_values,
        "userId": st.text(max_size=5) | json_values,
        "anonymousId": st.text(max_size=5) | json_values,
        "timestamp": st.sampled_from([T0, "nope"]) | json_values,
        "sentAt": json_values,
        "properties": st.dictionaries(st.sampled_from(PROPERTY_KEYS), json_values) | json_values,
        "context": st.dictionaries(st.sampled_from(CONTEXT_KEYS), json_values) | json_values,
    },
)


@PROPS
@given(messages=st.lists(plausible | noisy | json_values, max_size=6), sent_at=json_values)
def test_every_message_lands_in_exactly_one_place(messages: list[Any], sent_at: Any) -> None:
    body = {"batch": messages, "sentAt": sent_at}
    out = map_request(copy.deepcopy(body), "batch", MAPPING, RECEIVED)
    assert isinstance(out, Mapped)
    assert len(out.events) + len(out.rejected) + sum(out.unmapped.values()) == len(messages)
    assert len({i for i, *_ in out.rejected}) == len(out.rejected)
    assert all(r in ("schema", "too_large") for _, r, _, _ in out.rejected)
    assert all(n > 0 for n in out.unmapped.values())


@PROPS
@given(messages=st.lists(plausible, max_size=6))
def test_every_mapped_event_passes_pulse_validation(messages: list[Any]) -> None:
    out = map_request({"batch": messages}, "batch", MAPPING, RECEIVED)
    assert isinstance(out, Mapped)
    for event in out.events:
        checked = check_event(event, RECEIVED)
        # an id longer than the contract's 128 characters is the one thing left to Pulse
        if isinstance(checked, Rejection):
            assert "128" in checked.detail or "maxLength" in checked.detail, (checked, event)


def test_the_event_schema_knows_the_mapped_types() -> None:
    types = set(load_schema("event")["properties"]["type"]["enum"])
    assert {"view", "click", "add_to_cart", "purchase", "identify"} <= types
