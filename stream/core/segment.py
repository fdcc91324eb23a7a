"""Segment's HTTP Tracking API mapped onto Pulse events (pure logic: no Kafka, Faust or metrics).

The HTTP layer parses a request to ``/v1/batch``, ``/v1/track``, ... (or analytics.js's
``/v1/t``, ``/v1/b``, ...), takes ``writeKey`` out of the body, and calls
:func:`map_request` with the path's last segment. The answer splits the request's
messages three ways, each message landing in exactly one: Pulse events (PRODUCT.md
"Event") to validate and write, rejected messages for the DLQ (``schema`` or
``too_large``), and unmapped event names to count. The mapping itself lives in YAML
(``stream/segment.yaml``, documented there; ``PULSE_SEGMENT_MAPPING`` names an
override, loaded with :func:`load_mapping`).

>>> mapping = load_mapping(None)
>>> msg = {"type": "track", "event": "Promotion Clicked", "messageId": "m1",
...        "anonymousId": "a1", "timestamp": "2024-05-01T12:00:00Z",
...        "properties": {"promotion_id": "spring", "creative": "B"}}
>>> out = map_request({"batch": [msg], "sentAt": "2024-05-01T12:00:01Z"}, "b", mapping, 0)
>>> event = out.events[0]
>>> event["type"], event["campaign_id"], event["variant_id"], event["sent_at"]
('click', 'spring', 'B', 1714564801000)
>>> map_request({"batch": [dict(msg, event="Signed Up")]}, "batch", mapping, 0).unmapped
{'Signed Up': 1}
>>> map_request([msg], "track", mapping, 0)
'a /v1/track body must be one JSON object (a Segment track message), got an array'
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import yaml

from stream.core.errors import ConfigError
from stream.core.validation import json_type

__all__ = [
    "KINDS",
    "MAPPING_FILE",
    "SEGMENT_MAX_BATCH",
    "SEGMENT_MAX_MESSAGE",
    "Mapped",
    "SegmentMapping",
    "SegmentMappingError",
    "load_mapping",
    "map_request",
    "parse_mapping",
]

SEGMENT_MAX_MESSAGE = 32 * 1024  # Segment's limit per message (bytes, compact JSON)
SEGMENT_MAX_BATCH = 500 * 1024  # Segment's limit per batch request body

#: the path's last segment -> the Segment call it receives (analytics.js posts to
#: the first letter of the call: /v1/t, /v1/p, ...; /v1/b is its batch path)
KINDS: dict[str, str] = {
    "batch": "batch",
    "track": "track",
    "page": "page",
    "screen": "screen",
    "identify": "identify",
    "alias": "alias",
    "t": "track",
    "p": "page",
    "s": "screen",
    "i": "identify",
    "a": "alias",
    "b": "batch",
}

MAPPING_FILE = Path(__file__).resolve().parents[1] / "segment.yaml"

#: Segment calls a batch may hold; group has no Pulse counterpart (always unmapped)
CALLS = ("track", "page", "screen", "identify", "alias", "group")
TRACK_TYPES = ("view", "click", "add_to_cart", "purchase")
CHANNELS = ("web", "mobile", "email", "sms", "social", "search", "display")
FIELD_NAMES = ("campaign_id", "variant_id", "item_id")
MAX_EVENT_ID = 64
MAX_ITEMS = 100
MAX_QUANTITY = 1_000_000  # the event schema's bound per item
MAX_PROPERTIES_BYTES = 4 * 1024
_MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_UTM = ("name", "source", "medium", "term", "content")
_PURCHASE_KEYS = ("order_id", "revenue", "total", "currency", "products")
_KEYS: tuple[str, ...] = ("track", "fields", "default_currency", "page", "screen", "identify")
_KEYS += ("alias", "channel", "consent")


class SegmentMappingError(ConfigError):
    """A Segment mapping file is wrong: names the file, the key and what to fix."""


@dataclass(frozen=True)
class SegmentMapping:
    """A parsed, checked mapping document (see ``stream/segment.yaml``)."""

    source: str
    track: Mapping[str, str | None]  # Segment event name -> Pulse type (None: unmapped)
    campaign_fields: tuple[tuple[str, ...], ...]
    variant_fields: tuple[tuple[str, ...], ...]
    item_fields: tuple[tuple[str, ...], ...]
    default_currency: str = "USD"
    page: str | None = None
    screen: str | None = None
    identify: str | None = "identify"
    alias: str | None = "identify"
    medium_channels: Mapping[str, str] = field(default_factory=dict)
    library_channels: Mapping[str, str] = field(default_factory=dict)
    default_channel: str = "web"
    marketing_categories: frozenset[str] = frozenset()
    _folded: Mapping[str, str | None] = field(default_factory=dict, repr=False)

    def track_type(self, name: str) -> str | None:
        """The Pulse type of a track event name (exact, else folded), or None.

        >>> load_mapping(None).track_type("product_viewed")
        'view'
        """
        if name in self.track:
            return self.track[name]
        return self._folded.get(_fold(name))


@dataclass
class Mapped:
    """What a Segment request became; every message is in exactly one of the three."""

    events: list[dict[str, Any]] = field(default_factory=list)  # in message order
    #: (message index, reason, detail, original message JSON bytes) for the DLQ
    rejected: list[tuple[int, str, str, bytes]] = field(default_factory=list)
    unmapped: dict[str, int] = field(default_factory=dict)  # name -> messages dropped


# --- the mapping document -----------------------------------------------------------------


def load_mapping(path: str | None) -> SegmentMapping:
    """The packaged mapping, with the file at ``path`` (PULSE_SEGMENT_MAPPING) merged over it.

    Raises :class:`SegmentMappingError` (a ValueError) naming the file, the key and
    what to fix when a file cannot be read or is wrong.
    """
    doc = _read_yaml(MAPPING_FILE)
    source = str(MAPPING_FILE)
    if path:
        override = _read_yaml(Path(path))
        doc = _merge(doc, override)
        source = path
        unknown = [k for k in override if k not in _KEYS]
        if unknown:  # named against the override, not the merged document
            raise SegmentMappingError(
                f"Segment mapping {path}: key {unknown[0]!r} is not a mapping key; "
                f"use {', '.join(_KEYS)} (see stream/segment.yaml)"
            )
    return parse_mapping(doc, source)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SegmentMappingError(
            f"Segment mapping {path}: cannot be read ({exc.strerror or exc}); "
            "point PULSE_SEGMENT_MAPPING at a readable YAML file"
        ) from None
    except yaml.YAMLError as exc:
        raise SegmentMappingError(
            f"Segment mapping {path}: not valid YAML ({exc}); fix the syntax"
        ) from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise SegmentMappingError(
            f"Segment mapping {path}: the document is a {type(doc).__name__}; "
            "write a mapping of keys such as track:, channel:, consent:"
        )
    return doc


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base``: the tables key by key, anything else replaced."""
    out = dict(base)
    for key, value in over.items():
        if key == "track" and isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = {**base[key], **value}
        elif key == "channel" and isinstance(value, dict) and isinstance(base.get(key), dict):
            channel = dict(base[key])
            for sub, table in value.items():
                old = channel.get(sub)
                if sub in ("medium", "library") and isinstance(table, dict):
                    channel[sub] = {**old, **table} if isinstance(old, dict) else table
                else:
                    channel[sub] = table
            out[key] = channel
        else:
            out[key] = value
    return out


def parse_mapping(doc: Mapping[str, Any], source: str) -> SegmentMapping:
    """Check a mapping document and build the :class:`SegmentMapping`.

    >>> parse_mapping({"track": {"Product Viewed": "veiw"}}, "m.yaml")
    Traceback (most recent call last):
    ...
    stream.core.segment.SegmentMappingError: Segment mapping m.yaml: key 'track.Product \
Viewed': 'veiw' is not a Pulse type; use one of view, click, add_to_cart, purchase, or null \
to leave the event unmapped
    """

    def bad(key: str, problem: str, fix: str) -> SegmentMappingError:
        return SegmentMappingError(f"Segment mapping {source}: key {key!r}: {problem}; {fix}")

    for key in doc:
        if key not in _KEYS:
            raise bad(str(key), "not a mapping key", f"use {', '.join(_KEYS)}")

    track_doc = doc.get("track") or {}
    if not isinstance(track_doc, dict):
        raise bad("track", "must be a table", 'write track: {"Segment event name": view, ...}')
    track: dict[str, str | None] = {}
    for name, ptype in track_doc.items():
        if not isinstance(name, str) or not name:
            raise bad(f"track.{name}", "an event name must be text", "quote the name")
        if ptype is not None and ptype not in TRACK_TYPES:
            raise bad(
                f"track.{name}",
                f"{ptype!r} is not a Pulse type",
                f"use one of {', '.join(TRACK_TYPES)}, or null to leave the event unmapped",
            )
        track[name] = ptype
    folded: dict[str, str | None] = {}
    for name, ptype in track.items():
        folded.setdefault(_fold(name), ptype)

    fields_doc = doc.get("fields") or {}
    if not isinstance(fields_doc, dict):
        raise bad("fields", "must be a table", "write fields: {campaign_id: [path, ...], ...}")
    paths: dict[str, tuple[tuple[str, ...], ...]] = {}
    for name in fields_doc:
        if name not in FIELD_NAMES:
            raise bad(f"fields.{name}", "not a mapped field", f"use {', '.join(FIELD_NAMES)}")
    for name in FIELD_NAMES:
        value = fields_doc.get(name, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(
            isinstance(p, str) and p and all(p.split(".")) for p in value
        ):
            raise bad(
                f"fields.{name}",
                f"{value!r} is not a list of dotted paths",
                "write e.g. [properties.campaign_id, context.campaign.name]",
            )
        paths[name] = tuple(tuple(p.split(".")) for p in value)

    currency = doc.get("default_currency", "USD")
    if not (isinstance(currency, str) and len(currency) == 3 and currency.isalpha()):
        raise bad(
            "default_currency", f"{currency!r} is not a currency code", "write e.g. USD or EUR"
        )

    calls: dict[str, str | None] = {}
    for call, allowed in (
        ("page", ("view",)),
        ("screen", ("view",)),
        ("identify", ("identify",)),
        ("alias", ("identify",)),
    ):
        value = doc.get(call, "identify" if call in ("identify", "alias") else None)
        if value is not None and value not in allowed:
            raise bad(
                call, f"{value!r} is not allowed", f"use {' or '.join(allowed)}, or null to drop"
            )
        calls[call] = value

    channel_doc = doc.get("channel") or {}
    if not isinstance(channel_doc, dict):
        raise bad("channel", "must be a table", "write channel: {medium: {...}, library: {...}}")
    for sub in channel_doc:
        if sub not in ("medium", "library", "default"):
            raise bad(f"channel.{sub}", "not a channel key", "use medium, library, default")
    tables: dict[str, dict[str, str]] = {}
    for sub in ("medium", "library"):
        table = channel_doc.get(sub) or {}
        if not isinstance(table, dict):
            raise bad(f"channel.{sub}", "must be a table", f"write {sub}: {{name: channel}}")
        for name, ch in table.items():
            if ch not in CHANNELS:
                raise bad(
                    f"channel.{sub}.{name}",
                    f"{ch!r} is not a Pulse channel",
                    f"use one of {', '.join(CHANNELS)}",
                )
        lower = sub == "medium"  # UTM media are compared lower-cased
        tables[sub] = {(str(k).lower() if lower else str(k)): v for k, v in table.items()}
    default_channel = channel_doc.get("default", "web")
    if default_channel not in CHANNELS:
        raise bad(
            "channel.default",
            f"{default_channel!r} is not a Pulse channel",
            f"use one of {', '.join(CHANNELS)}",
        )

    consent_doc = doc.get("consent") or {}
    if not isinstance(consent_doc, dict) or any(k != "marketing_categories" for k in consent_doc):
        raise bad("consent", "must be a table with marketing_categories", "see segment.yaml")
    categories = consent_doc.get("marketing_categories", [])
    if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
        raise bad(
            "consent.marketing_categories",
            f"{categories!r} is not a list of category names",
            "write e.g. [marketing, advertising]",
        )

    return SegmentMapping(
        source=source,
        track=track,
        campaign_fields=paths["campaign_id"],
        variant_fields=paths["variant_id"],
        item_fields=paths["item_id"],
        default_currency=currency.upper(),
        page=calls["page"],
        screen=calls["screen"],
        identify=calls["identify"],
        alias=calls["alias"],
        medium_channels=tables["medium"],
        library_channels=tables["library"],
        default_channel=default_channel,
        marketing_categories=frozenset(c.lower() for c in categories),
        _folded=folded,
    )


def _fold(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


# --- requests -----------------------------------------------------------------------------


class _Reject(Exception):
    """One message cannot become an event (DLQ reason schema)."""


def map_request(parsed: Any, kind: str, mapping: SegmentMapping, received_ms: int) -> Mapped | str:
    """Map a parsed Segment request body to Pulse events.

    ``kind`` is the path's last segment (a key of :data:`KINDS`). Returns an error
    text (for a 400) when the body is not a Segment request at all. On ``/v1/batch``
    each message's ``type`` says which call it is, and the batch's ``sentAt`` (and
    ``context``, merged under the message's own) apply to its messages. A message's own
    ``writeKey`` (analytics.js repeats it in each) is never copied, not even to the DLQ
    bytes. Never raises.
    """
    call = KINDS.get(kind)
    if call is None:
        return f"unknown Segment path /v1/{kind}: post to /v1/batch, /v1/track, ... or /v1/t, ..."
    batch_sent_at: Any = None
    batch_context: dict[str, Any] | None = None
    if call == "batch":
        if not isinstance(parsed, dict) or not isinstance(parsed.get("batch"), list):
            got = (
                "an object without a batch array" if isinstance(parsed, dict) else json_type(parsed)
            )
            return (
                f"a /v1/{kind} body must be a JSON object with a batch array of Segment "
                f'messages ({{"batch": [{{"type": "track", ...}}]}}), got {got}'
            )
        messages: list[Any] = parsed["batch"]
        batch_sent_at = parsed.get("sentAt")
        if isinstance(parsed.get("context"), dict):
            batch_context = parsed["context"]
    else:
        if not isinstance(parsed, dict):
            return (
                f"a /v1/{kind} body must be one JSON object (a Segment {call} message), "
                f"got {json_type(parsed)}"
            )
        messages = [parsed]

    out = Mapped()
    for index, message in enumerate(messages):
        try:
            _map_one(index, message, call, batch_sent_at, batch_context, mapping, received_ms, out)
        except Exception as exc:  # a mapping bug must never lose a message quietly
            out.rejected.append(
                (
                    index,
                    "schema",
                    f"message could not be mapped ({type(exc).__name__}: {_clip(str(exc))})",
                    _dumps(message),
                )
            )
    return out


def _map_one(
    index: int,
    message: Any,
    call: str,
    batch_sent_at: Any,
    batch_context: dict[str, Any] | None,
    mapping: SegmentMapping,
    received_ms: int,
    out: Mapped,
) -> None:
    if isinstance(message, dict) and "writeKey" in message:
        # analytics.js repeats the key in every message of a batch: keep it out of the DLQ
        message = {k: v for k, v in message.items() if k != "writeKey"}
    raw = _dumps(message)
    where = f"batch[{index}]" if call == "batch" else "message"
    if not isinstance(message, dict):
        detail = f"{where} is {json_type(message)}: send each Segment message as a JSON object"
        out.rejected.append((index, "schema", detail, raw))
        return
    if len(raw) > SEGMENT_MAX_MESSAGE:
        detail = (
            f"{where} is {len(raw)} bytes, over Segment's {SEGMENT_MAX_MESSAGE}-byte limit per "
            "message: trim properties, traits or context"
        )
        out.rejected.append((index, "too_large", detail, raw))
        return
    try:
        event = _to_event(message, call, batch_sent_at, batch_context, mapping, received_ms)
    except _Reject as exc:
        out.rejected.append((index, "schema", f"{where}: {exc}", raw))
        return
    if isinstance(event, str):
        out.unmapped[event] = out.unmapped.get(event, 0) + 1
    else:
        out.events.append(event)


def _to_event(
    msg: dict[str, Any],
    call: str,
    batch_sent_at: Any,
    batch_context: dict[str, Any] | None,
    mapping: SegmentMapping,
    received_ms: int,
) -> dict[str, Any] | str:
    """The Pulse event of one message, or the name to count it under as unmapped."""
    if call == "batch":
        call = msg.get("type")  # type: ignore[assignment]
        if call not in CALLS:
            raise _Reject(
                f"type {_show(call)} is not a Segment call: send type track, page, screen, "
                "identify, alias or group"
            )
    name = None
    if call == "track":
        name = msg.get("event")
        if not isinstance(name, str) or not name.strip():
            raise _Reject(
                f"track event name {_show(name)} is missing or empty: send event, e.g. "
                '"Product Viewed"'
            )

    # The envelope every Segment message has, mapped or not.
    event: dict[str, Any] = {"event_id": _event_id(msg.get("messageId"))}
    stamp, stamp_field = msg.get("timestamp"), "timestamp"
    if stamp is None:
        stamp, stamp_field = msg.get("originalTimestamp"), "originalTimestamp"
    sent_at = msg.get("sentAt", batch_sent_at)
    if stamp is None:  # Segment then takes its receive time: no skew to correct
        event["event_time"] = received_ms
    else:
        event["event_time"] = _ms(stamp, stamp_field)
        if sent_at is not None:
            event["sent_at"] = _ms(sent_at, "sentAt")
    user_id = _text_id(msg.get("userId"), "userId")
    anonymous_id = _text_id(msg.get("anonymousId"), "anonymousId")
    if user_id is None and anonymous_id is None:
        raise _Reject("has neither userId nor anonymousId: send at least one of them")

    # Which Pulse type, if any.
    if call == "track":
        assert name is not None
        ptype = mapping.track_type(name)
        if ptype is None:
            return name
    elif call in ("page", "screen"):
        ptype = mapping.page if call == "page" else mapping.screen
        if ptype is None:
            return call
    elif call == "identify":
        ptype = mapping.identify
        if ptype is None or user_id is None:  # an anonymous identify links nothing
            return call
    elif call == "alias":
        if mapping.alias is None:
            return call
        ptype = "identify"
        previous = _text_id(msg.get("previousId"), "previousId")
        if previous is None or user_id is None:
            raise _Reject("an alias needs userId (the new id) and previousId (the old one)")
        event["previous_id"] = previous
    else:  # group
        return call
    event["type"] = ptype
    if user_id is not None:
        event["user_id"] = user_id
    if anonymous_id is not None:
        event["anonymous_id"] = anonymous_id

    context = msg.get("context")
    if batch_context is not None:
        context = {**batch_context, **context} if isinstance(context, dict) else batch_context
    if not isinstance(context, dict):
        context = {}
    pulse_context = _context(context)
    if pulse_context:
        event["context"] = pulse_context
    consent = _consent(context, mapping)
    if consent is not None:
        event["consent"] = consent
    event["channel"] = _channel(context, mapping)
    if ptype == "identify":
        return event

    props = msg.get("properties")
    if not isinstance(props, dict):
        props = {}
    used: set[str] = set()
    for key, paths in (
        ("campaign_id", mapping.campaign_fields),
        ("variant_id", mapping.variant_fields),
        ("item_id", mapping.item_fields),
    ):
        if key == "item_id" and ptype == "purchase":
            continue  # a purchase names its items in items
        value = _first(msg, paths, used)
        if value is not None:
            event[key] = value
    if ptype in ("view", "click", "add_to_cart") and not (
        "campaign_id" in event or "item_id" in event
    ):
        if call != "track":  # a page or screen outside any campaign or product
            return call
        raise _Reject(
            f"{name!r} is a {ptype} but names no campaign and no product: send "
            f"{_paths(mapping.campaign_fields)} or {_paths(mapping.item_fields)}"
        )
    if ptype == "purchase":
        _purchase(props, event, mapping, used)
    rest = {k: v for k, v in props.items() if k not in used}
    if rest and _size(rest) <= MAX_PROPERTIES_BYTES:
        event["properties"] = rest
    return event


def _purchase(
    props: dict[str, Any], event: dict[str, Any], mapping: SegmentMapping, used: set[str]
) -> None:
    order = _text_id(props.get("order_id"), "properties.order_id")
    if order is not None:
        event["order_id"] = order
    items = _items(props.get("products"))
    revenue = None
    for key in ("revenue", "total"):
        revenue = _amount(props.get(key), f"properties.{key}")
        if revenue is not None:
            break
    if revenue is None and items and all("price" in i for i in items):
        revenue = round(sum(i["price"] * i["quantity"] for i in items), 6)
    if revenue is None:
        raise _Reject(
            "an Order Completed needs its value: send properties.revenue or properties.total "
            "(a number >= 0), or products with prices"
        )
    event["revenue"] = revenue
    currency = props.get("currency", mapping.default_currency)
    if not (isinstance(currency, str) and len(currency) == 3 and currency.isascii()):
        raise _Reject(
            f"properties.currency {_show(currency)} is not an ISO 4217 code: send e.g. USD"
        )
    event["currency"] = currency.upper()
    if items:
        event["items"] = items
    used.update(_PURCHASE_KEYS)


def _items(products: Any) -> list[dict[str, Any]]:
    """Segment products -> Pulse items (at most :data:`MAX_ITEMS`; those without an id skipped)."""
    if not isinstance(products, list):
        return []
    out: list[dict[str, Any]] = []
    for product in products:
        if len(out) == MAX_ITEMS:
            break
        if not isinstance(product, dict):
            continue
        item_id = None
        for key in ("product_id", "sku"):
            item_id = _plain_id(product.get(key))
            if item_id is not None:
                break
        if item_id is None:
            continue
        item: dict[str, Any] = {"item_id": item_id}
        quantity = product.get("quantity")
        if isinstance(quantity, float) and quantity.is_integer():
            quantity = int(quantity)
        item["quantity"] = (
            quantity if type(quantity) is int and 1 <= quantity <= MAX_QUANTITY else 1
        )
        try:
            price = _amount(product.get("price"), "price")
        except _Reject:
            price = None
        if price is not None:
            item["price"] = price
        out.append(item)
    return out


def _context(context: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for src, dst in (
        ("ip", "ip"),
        ("userAgent", "user_agent"),
        ("locale", "locale"),
        ("timezone", "timezone"),
    ):
        value = context.get(src)
        if isinstance(value, str) and value:
            out[dst] = value
    page = context.get("page")
    if isinstance(page, dict) and isinstance(page.get("url"), str) and page["url"]:
        out["page_url"] = page["url"]
    campaign = context.get("campaign")
    if isinstance(campaign, dict):
        utm = {k: campaign[k] for k in _UTM if isinstance(campaign.get(k), str) and campaign[k]}
        if utm:
            out["utm"] = utm
    return out


def _channel(context: dict[str, Any], mapping: SegmentMapping) -> str:
    campaign = context.get("campaign")
    if isinstance(campaign, dict):
        medium = campaign.get("medium")
        if isinstance(medium, str):
            found = mapping.medium_channels.get(medium.strip().lower())
            if found is not None:
                return found
    library = context.get("library")
    if isinstance(library, dict) and isinstance(library.get("name"), str):
        found = mapping.library_channels.get(library["name"])
        if found is not None:
            return found
    return mapping.default_channel


def _consent(context: dict[str, Any], mapping: SegmentMapping) -> dict[str, bool] | None:
    consent = context.get("consent")
    if not isinstance(consent, dict):
        return None
    prefs = consent.get("categoryPreferences")
    if not isinstance(prefs, dict):
        return None
    found = [
        v
        for k, v in prefs.items()
        if isinstance(k, str) and k.lower() in mapping.marketing_categories and type(v) is bool
    ]
    return {"marketing": all(found)} if found else None


def _first(msg: dict[str, Any], paths: tuple[tuple[str, ...], ...], used: set[str]) -> str | None:
    """The first path with a usable id; a ``properties.*`` key used is added to ``used``."""
    for path in paths:
        value: Any = msg
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        found = _plain_id(value)
        if found is not None:
            if len(path) == 2 and path[0] == "properties":
                used.add(path[1])
            return found
    return None


def _plain_id(value: Any) -> str | None:
    """A non-empty string or an integer as text; anything else None."""
    if isinstance(value, str):
        return value if value.strip() else None
    if type(value) is int:
        return str(value)
    return None


def _text_id(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    found = _plain_id(value)
    if found is None:
        raise _Reject(f"{name} {_show(value)} must be a string: send the id as text")
    return found


def _event_id(value: Any) -> str:
    found = _plain_id(value)
    if found is None:
        raise _Reject(
            f"messageId {_show(value)} is missing or not a string: send a unique messageId "
            "(every Segment library sets one)"
        )
    if len(found) > MAX_EVENT_ID:  # still one id per messageId, so repeats dedupe
        found = "seg-" + hashlib.sha256(found.encode("utf-8", "surrogatepass")).hexdigest()[:60]
    return found


def _amount(value: Any, name: str) -> float | int | None:
    """A finite number >= 0 (a numeric string accepted), None when absent."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            number: Any = float(value)
        except ValueError:
            raise _Reject(f"{name} {_show(value)} is not a number: send e.g. 49.9") from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = value
    else:
        raise _Reject(f"{name} {_show(value)} is not a number: send e.g. 49.9")
    try:
        ok = math.isfinite(number) and number >= 0
    except OverflowError:
        ok = False
    if not ok:
        raise _Reject(f"{name} {_show(value)} must be a finite number >= 0")
    return number


def _ms(value: Any, name: str) -> int:
    """Epoch ms of an ISO 8601 / RFC 3339 text (no offset = UTC) or an integer of epoch ms."""
    hint = "send an ISO 8601 date-time such as 2024-05-01T12:00:00.000Z"
    if type(value) is int:
        ms = value
    elif isinstance(value, str):
        text = value.strip()
        if text[-1:] in ("z", "Z"):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            loose = _loose_datetime(text)
            if loose is None:
                raise _Reject(f"{name} {_show(value)} is not a date-time: {hint}") from None
            moment = loose
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        try:
            ms = (moment - _EPOCH) // _ONE_MS
        except OverflowError:
            raise _Reject(f"{name} {_show(value)} is out of range: {hint}") from None
    else:
        raise _Reject(f"{name} {_show(value)} is not a date-time: {hint}")
    if not 0 <= ms <= _MAX_TS_MS:
        raise _Reject(f"{name} {_show(value)} is out of range: {hint}")
    return ms


_LOOSE = re.compile(
    r"(\d{4})-(\d{1,2})-(\d{1,2})[T ](\d{1,2}):(\d{1,2})(?::(\d{1,2})(?:\.(\d{1,9}))?)?"
    r"(?:([+-])(\d{2}):?(\d{2}))?",
    re.ASCII,
)


def _loose_datetime(text: str) -> datetime | None:
    """ISO 8601 with one-digit fields, as Segment's own docs write ``2015-2-02T00:30:08.276Z``.

    >>> _loose_datetime("2015-2-02T00:30:08.276+00:00")
    datetime.datetime(2015, 2, 2, 0, 30, 8, 276000, tzinfo=datetime.timezone.utc)
    """
    found = _LOOSE.fullmatch(text)
    if found is None:
        return None
    y, mo, d, h, mi, sec, frac, sign, oh, om = found.groups()
    try:
        offset = timedelta(hours=int(oh), minutes=int(om)) if sign else timedelta(0)
        zone = timezone(-offset if sign == "-" else offset)
        micro = int((frac or "0").ljust(6, "0")[:6])
        return datetime(int(y), int(mo), int(d), int(h), int(mi), int(sec or 0), micro, zone)
    except ValueError:
        return None


def _dumps(value: Any) -> bytes:
    """Compact JSON of a message, for its size and the DLQ (never raises)."""
    try:
        return orjson.dumps(value)
    except Exception:  # deeper than orjson writes (254 levels), or not JSON at all
        return orjson.dumps(_clip(repr(value), 4000))


def _size(value: Any) -> int:
    try:
        return len(orjson.dumps(value))
    except Exception:
        return MAX_PROPERTIES_BYTES + 1


def _paths(paths: tuple[tuple[str, ...], ...]) -> str:
    return " or ".join(".".join(p) for p in paths) or "(no field configured)"


def _show(value: Any) -> str:
    return _clip(repr(value), 60)


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
