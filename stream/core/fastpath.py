"""A conservative fast check of the common event shape, in front of the JSON Schema.

The compiled schema (``schemas/event.schema.json``) costs about 10 µs per event;
most events are plain: integer timestamps, string ids, known keys. For those
:func:`plainly_valid` answers True in a fraction of that. It never accepts what
the schema rejects (a property test compares both); anything unusual — RFC 3339
strings, unknown keys, odd types — answers False and the full schema decides
(and explains the error).

>>> plainly_valid({"event_id": "e1", "type": "view", "event_time": 1000,
...                "user_id": "u1", "campaign_id": "c1"})
True
>>> plainly_valid({"event_id": "e1", "type": "view", "event_time": "2024-05-01T12:00:00Z",
...                "user_id": "u1", "campaign_id": "c1"})
False
"""

from __future__ import annotations

from typing import Any

__all__ = ["plainly_valid"]

_MAX_TS = 253402300799999
_TYPES = frozenset(("view", "click", "purchase"))
_CHANNELS = frozenset(("web", "mobile", "email", "sms", "social", "search", "display"))
_IDS = (
    "user_id",
    "anonymous_id",
    "campaign_id",
    "variant_id",
    "session_id",
    "order_id",
    "item_id",
)
_CONTEXT_STRINGS = ("ip", "user_agent", "page_url", "locale", "timezone")
_KEYS = frozenset(
    (
        "event_id",
        "type",
        "event_time",
        "sent_at",
        *_IDS,
        "channel",
        "revenue",
        "currency",
        "consent",
        "context",
        "properties",
        "received_at",
    )
)


def plainly_valid(event: dict[str, Any]) -> bool:
    """True only if ``event`` certainly passes the event schema; False means "ask the schema"."""
    if not _KEYS.issuperset(event):
        return False
    event_id = event.get("event_id")
    if type(event_id) is not str or not 0 < len(event_id) <= 64:
        return False
    etype = event.get("type")
    if type(etype) is not str or etype not in _TYPES:
        return False
    for field in ("event_time", "sent_at", "received_at"):
        if field in event:
            ts = event[field]
            if type(ts) is not int or not 0 <= ts <= _MAX_TS:
                return False
    if "event_time" not in event:
        return False
    for field in _IDS:
        if field in event:
            value = event[field]
            if type(value) is not str or not 0 < len(value) <= 128:
                return False
    if "user_id" not in event and "anonymous_id" not in event:
        return False
    if "channel" in event:
        channel = event["channel"]
        if type(channel) is not str or channel not in _CHANNELS:
            return False
    if etype == "purchase":
        if "revenue" not in event or "currency" not in event:
            return False
    elif "campaign_id" not in event:
        return False
    if "revenue" in event:
        revenue = event["revenue"]
        if type(revenue) not in (int, float) or not revenue >= 0:
            return False
    if "currency" in event:
        currency = event["currency"]
        if type(currency) is not str or len(currency) != 3 or not currency.isascii():
            return False
        if not currency.isalpha():
            return False
    return _plain_nested(event)


def _plain_nested(event: dict[str, Any]) -> bool:
    consent = event.get("consent")
    if consent is not None or "consent" in event:
        if type(consent) is not dict:
            return False
        for value in consent.values():
            if type(value) is not bool:
                return False
    if "context" in event:
        context = event["context"]
        if type(context) is not dict:
            return False
        for field in _CONTEXT_STRINGS:
            if field in context and type(context[field]) is not str:
                return False
        if "utm" in context:
            utm = context["utm"]
            if type(utm) is not dict:
                return False
            for value in utm.values():
                if type(value) is not str:
                    return False
    return "properties" not in event or type(event["properties"]) is dict
