"""Validate and normalise incoming events (pure logic: no Kafka, Faust or metrics).

:func:`parse_event` takes the raw message bytes; :func:`check_event` takes an
already-parsed value (the HTTP collector). Both return either the normalised
event (a new dict with ``ts``, ``received_at``, ``channel`` and upper-cased
``currency``) or a :class:`Rejection` whose ``reason`` is a DLQ reason code.
They never raise, whatever the input.

>>> raw = b'{"event_id": "e1", "type": "click", "event_time": 1000, "sent_at": 1500,'
>>> raw += b' "user_id": "u1", "campaign_id": "c1"}'
>>> event = parse_event(raw, received_ms=9000)
>>> event["ts"], event["received_at"], event["channel"]
(8500, 9000, 'web')
>>> parse_event(b'[1, 2]', received_ms=9000).reason
'not_object'
>>> bad = b'{"event_id": "e1", "type": "hover", "event_time": 1000, "user_id": "u1"}'
>>> print(parse_event(bad, received_ms=9000).detail.split(": ")[0])
data.type must be one of ['view', 'click', 'add_to_cart', 'purchase', 'identify']
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import fastjsonschema
import orjson

from schemas import load_schema
from stream.core.fastpath import plainly_valid
from stream.core.privacy import Pseudonymizer, protect

__all__ = [
    "MAX_EVENT_BYTES",
    "MAX_PROPERTIES_BYTES",
    "Rejection",
    "check_event",
    "json_type",
    "normalize",
    "parse_event",
]

MAX_EVENT_BYTES = 32 * 1024
MAX_PROPERTIES_BYTES = 4 * 1024
DEFAULT_CHANNEL = "web"


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an input cannot be processed; ``reason`` is the DLQ reason code."""

    reason: str  # one of invalid_json, not_object, schema, too_large
    detail: str  # what was wrong and what to do about it


# ``use_default=False``: the schema documents ``"default": "web"`` for channel, but
# the validator must not write it into the caller's dict (normalize adds it to a copy).
_validate = fastjsonschema.compile(load_schema("event"), use_default=False)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_ONE_S_MS = 1000
_MAX_DETAIL_PART = 200
_TIMESTAMP_HINT = (
    "send an RFC 3339 date-time with a UTC offset (e.g. 2024-05-01T12:00:00Z) "
    "or integer epoch milliseconds (e.g. 1714564800000)"
)
_REQUIRED = ("event_id", "type", "event_time")
_REQUIRED_HINT = "every event needs event_id, type and event_time"
_ID_HINT = "send a string of 1-128 characters"
_FIELD_HINTS = {
    "event_id": "send a unique string of 1-64 characters, e.g. a UUID",
    "type": "send a supported event type",
    "event_time": _TIMESTAMP_HINT,
    "sent_at": _TIMESTAMP_HINT + ", or omit it",
    "user_id": _ID_HINT,
    "anonymous_id": _ID_HINT,
    "campaign_id": _ID_HINT,
    "variant_id": _ID_HINT + ", or omit it",
    "session_id": _ID_HINT + ", or omit it",
    "order_id": _ID_HINT + ", or omit it",
    "item_id": _ID_HINT + ", or omit it",
    "previous_id": _ID_HINT + ", or omit it",
    "items": (
        'send items as an array of at most 100 {"item_id": string, "quantity": integer >= 1, '
        '"price": number >= 0}'
    ),
    "channel": "send a supported channel, or omit it to use web",
    "revenue": "send revenue as a finite number >= 0",
    "currency": "send a 3-letter ISO 4217 currency code such as USD",
    "consent": 'send consent as {"marketing": true} or {"marketing": false}',
    "context": (
        "send context as an object whose ip, user_agent, page_url, locale and timezone are "
        "strings and whose utm is an object of strings"
    ),
    "properties": "send properties as a JSON object",
    "received_at": "omit received_at: Pulse sets it",
}


class InvalidTimestamp(ValueError):
    """A timestamp field that matched the schema but is not a real instant."""

    def __init__(self, field: str, value: object) -> None:
        super().__init__(f"data.{field} is not a valid timestamp ({_clip(repr(value))})")
        self.field = field


def parse_event(
    raw: bytes, received_ms: int, pseudonymizer: Pseudonymizer | None = None
) -> dict[str, Any] | Rejection:
    """Parse one raw message and validate it; see :func:`check_event`."""
    try:
        size = len(raw)
        if size > MAX_EVENT_BYTES:
            return Rejection(
                "too_large",
                f"event is {size} bytes, over the {MAX_EVENT_BYTES}-byte limit: "
                "trim properties or context",
            )
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Rejection("invalid_json", f"invalid JSON ({exc}): send UTF-8 encoded JSON text")
    except Exception as exc:  # e.g. not bytes at all
        return Rejection(
            "invalid_json",
            f"cannot read the message as JSON ({type(exc).__name__}): send UTF-8 encoded JSON text",
        )
    return check_event(obj, received_ms, pseudonymizer)


def check_event(
    obj: object, received_ms: int, pseudonymizer: Pseudonymizer | None = None
) -> dict[str, Any] | Rejection:
    """Validate an already-parsed JSON value and return the normalised event or a Rejection."""
    if not isinstance(obj, dict):
        return Rejection(
            "not_object",
            f"expected a JSON object, got {json_type(obj)}: send each event as one JSON object",
        )
    try:
        if not plainly_valid(obj):  # the common shape skips the full schema
            _validate(obj)
    except fastjsonschema.JsonSchemaValueException as exc:
        try:
            detail = _describe(exc, obj)
        except Exception:  # never let error reporting itself fail
            detail = _clip(str(exc.message))
        return Rejection("schema", detail)
    except Exception as exc:  # a validator bug must not stop a worker
        return Rejection("schema", f"event could not be validated ({type(exc).__name__}: {exc})")

    props = obj.get("properties")
    if props:
        try:
            props_size = len(orjson.dumps(props))
        except Exception as exc:  # nested over 254 levels, non-str keys, huge ints...
            return Rejection(
                "schema",
                f"data.properties cannot be serialised as JSON ({_clip(str(exc))}): "
                "send a plain, shallower JSON object",
            )
        if props_size > MAX_PROPERTIES_BYTES:
            return Rejection(
                "too_large",
                f"data.properties is {props_size} bytes, over the {MAX_PROPERTIES_BYTES}-byte "
                "limit: send fewer or shorter properties",
            )

    revenue = obj.get("revenue")
    if revenue is not None:  # NaN, inf and huge ints only reach here from Python callers
        try:
            finite = math.isfinite(revenue)
        except OverflowError:
            finite = False
        if not finite:
            return Rejection("schema", "data.revenue must be finite: " + _FIELD_HINTS["revenue"])

    try:
        return normalize(obj, received_ms, pseudonymizer)
    except InvalidTimestamp as exc:
        return Rejection("schema", f"{exc}: {_FIELD_HINTS[exc.field]}")
    except Exception as exc:
        return Rejection("schema", f"event could not be normalised ({type(exc).__name__}: {exc})")


def normalize(
    event: dict[str, Any], received_ms: int, pseudonymizer: Pseudonymizer | None = None
) -> dict[str, Any]:
    """Return a new dict: ``event``'s fields plus ``ts``, ``received_at`` and defaults.

    ``ts`` is the event time in epoch ms; with ``sent_at`` it is corrected for device
    clock skew as ``received_ms - (sent_at - event_time)``. ``received_at`` is always
    ``received_ms``. ``channel`` defaults to ``"web"``; ``currency`` is upper-cased.
    ``context.ip`` is truncated to its network and, with a ``pseudonymizer``,
    ``user_id`` / ``anonymous_id`` are replaced by their pseudonyms
    (:mod:`stream.core.privacy`).
    The copy is shallow: nested objects are shared with ``event`` and left untouched.
    Expects a schema-valid event; raises :class:`InvalidTimestamp` (a ValueError) for
    an unusable timestamp.
    """
    out = dict(event)
    ts = _to_ms(event["event_time"], "event_time")
    sent_at = event.get("sent_at")
    if sent_at is not None:
        ts = received_ms - (_to_ms(sent_at, "sent_at") - ts)
    out["ts"] = ts
    out["received_at"] = received_ms
    if "channel" not in out:
        out["channel"] = DEFAULT_CHANNEL
    currency = out.get("currency")
    if currency is not None:
        out["currency"] = currency.upper()
    if pseudonymizer is not None or "context" in out:
        protect(out, pseudonymizer)
    return out


def receive_time_ms(raw: bytes) -> int | None:
    """When a recorded event was originally received, for replays and backtests.

    Its ``received_at`` if present, else its ``sent_at`` (so skew correction
    leaves ``event_time`` as is), else its ``event_time``; None when unreadable.

    >>> receive_time_ms(b'{"event_time": 1000, "sent_at": 1500}')
    1500
    """
    try:
        obj = orjson.loads(raw)
        for field in ("received_at", "sent_at", "event_time"):
            value = obj.get(field)
            if value is not None:
                return _to_ms(value, field)
    except Exception:
        return None
    return None


def _to_ms(value: object, field: str) -> int:
    """Epoch ms from an int, an integral float or an RFC 3339 string (naive = UTC)."""
    if type(value) is int:
        return value
    if type(value) is str:
        return _rfc3339_to_ms(value, field)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    raise InvalidTimestamp(field, value)


def _rfc3339_to_ms(text: str, field: str) -> int:
    if text[-1:] == "z":  # RFC 3339 allows lower case; fromisoformat does not
        text = text[:-1] + "Z"
    try:
        moment = datetime.fromisoformat(text)
        extra_ms = 0
    except ValueError:
        # RFC 3339 allows a leap second (:60); count it as the next second's start.
        if text[16:19] != ":60":
            raise InvalidTimestamp(field, text) from None
        try:
            moment = datetime.fromisoformat(text[:17] + "59" + text[19:])
        except ValueError:
            raise InvalidTimestamp(field, text) from None
        extra_ms = _ONE_S_MS - moment.microsecond // 1000
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _ONE_MS + extra_ms


def _describe(exc: fastjsonschema.JsonSchemaValueException, event: dict[Any, Any]) -> str:
    """Schema error -> 'what is wrong: what to do'."""
    path = exc.path or []
    field = path[1] if len(path) > 1 else None
    rule = exc.rule
    if field is None:
        # fastjsonschema checks anyOf before required: report missing basics first.
        missing = [name for name in _REQUIRED if name not in event]
        if missing and rule in ("anyOf", "required"):
            return f"data must contain {missing} properties: {_REQUIRED_HINT}"
        if (
            rule == "anyOf"
            and exc.rule_definition
            and {"required": ["item_id"]} in (exc.rule_definition)
        ):
            return (
                "data must contain campaign_id or item_id: view, click and add_to_cart events "
                "need the campaign they belong to or the item they are about"
            )
        if rule == "anyOf":
            return (
                "data must contain user_id or anonymous_id: identify the user (user_id) "
                "or the device (anonymous_id)"
            )
        if rule == "required":
            missing = exc.rule_definition or []
            if "user_id" in missing:
                hint = "identify events link an anonymous_id (or previous_id) to a user_id"
            elif "revenue" in missing or "currency" in missing:
                hint = (
                    "purchase events need revenue (a number >= 0) and currency "
                    "(an ISO 4217 code such as USD)"
                )
            else:
                hint = _REQUIRED_HINT
            return f"{exc.message}: {hint}"
        if rule == "additionalProperties":
            hint = "remove unknown top-level fields or move them into properties"
            return f"{_clip(exc.message)}: {hint}"
        return f"{_clip(exc.message)}: send an event as described by schemas/event.schema.json"
    hint = _FIELD_HINTS.get(field, "see schemas/event.schema.json")
    return f"{_clip(exc.message)}: {hint}"


def _clip(text: str) -> str:
    if len(text) <= _MAX_DETAIL_PART:
        return text
    return text[: _MAX_DETAIL_PART - 3] + "..."


def json_type(value: object) -> str:
    """How a parsed JSON value reads in an error message.

    >>> json_type([1]), json_type({}), json_type(None)
    ('an array', 'an object', 'null')
    """
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if value is None:
        return "null"
    return type(value).__name__
