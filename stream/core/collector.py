"""Pure rules of the HTTP collector: auth, rate limit and body classification.

>>> keys = WriteKeys(["k1"])
>>> keys.check("Bearer k1"), keys.check("Bearer nope"), keys.check(None)
(True, False, False)
>>> keys.match_key(presented_key("Basic azE6", None)), presented_key(None, "k1")
('k1', 'k1')
>>> body = classify_body(b'[{"type":"view"}]', received_ms=0)
>>> body.status, len(body.accepted), body.errors[0]["reason"]
(202, 0, 'schema')
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from stream.core.ingest import dlq_record
from stream.core.privacy import protect
from stream.core.validation import Rejection, check_event

MAX_BODY_BYTES = 512 * 1024
MAX_ITEMS = 500


def presented_key(authorization: str | None, query_key: str | None) -> str | None:
    """The write key a request presents outside its body, or None.

    ``Authorization: Bearer <key>``, HTTP Basic with the key as user name and an
    empty password (Segment's convention), or ``?key=`` (what ``sendBeacon``, which
    cannot set headers, can send). The scheme is case-insensitive (RFC 7235).

    >>> presented_key("bearer  k1 ", None), presented_key("Basic " + "azE6", None)
    ('k1', 'k1')
    >>> presented_key(None, "k1"), presented_key("Token k1", None), presented_key(None, None)
    ('k1', '', None)
    """
    if authorization is not None:
        if len(authorization) > 4096:
            return ""
        scheme, _, token = authorization.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            return token.strip()
        if scheme == "basic":
            try:
                raw = base64.b64decode(token.strip().encode("ascii"), validate=True)
                return raw.decode("utf-8").partition(":")[0]
            except (ValueError, binascii.Error):  # UnicodeError is a ValueError
                return ""
        return ""  # an unknown scheme presents no valid key
    return query_key


def body_key(parsed: Any) -> str | None:
    """Take the ``writeKey`` field out of a parsed JSON object body (analytics.js sends
    its key there); None when there is none.

    >>> body = {"writeKey": "k1", "event_id": "e1"}
    >>> body_key(body), body, body_key([{"writeKey": "k1"}])
    ('k1', {'event_id': 'e1'}, None)
    """
    if isinstance(parsed, dict):
        value = parsed.pop("writeKey", None)
        return value if isinstance(value, str) else None
    return None


class WriteKeys:
    """Constant-time write-key check against every configured key.

    Keys are compared as SHA-256 digests, so neither the key's length nor which
    key matched shows in the time taken.

    >>> WriteKeys(["k1"]).match("bearer  k1 "), WriteKeys(["k1"]).match("Basic k1")
    ('k1', None)
    """

    def __init__(self, keys: list[str] | tuple[str, ...]) -> None:
        self._keys = [(hashlib.sha256(k.encode()).digest(), k) for k in keys]

    def match_key(self, token: str | None) -> str | None:
        """Return the configured key equal to ``token``, or None."""
        if not token or len(token) > 4096:
            return None
        # aiohttp keeps undecodable header bytes as surrogates: encode them back, never raise
        given = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found = None
        for digest, key in self._keys:  # no early exit: time does not depend on the match
            if hmac.compare_digest(given, digest):
                found = key
        return found

    def match(self, header: str | None) -> str | None:
        """Return the key an ``Authorization`` header (Bearer or Basic) carries, or None."""
        return self.match_key(presented_key(header, None)) if header else None

    def check(self, header: str | None) -> bool:
        return self.match(header) is not None


class RateLimiter:
    """Token bucket per write key, in events per second with one second of burst.

    >>> rl = RateLimiter(rate=10, clock=lambda: 0.0)
    >>> rl.take("k", 10), rl.take("k", 1)
    (0.0, 0.1)
    """

    def __init__(self, rate: float, burst_s: float = 1.0, clock: Any = time.monotonic) -> None:
        self.rate = rate
        self.capacity = max(rate * burst_s, 1.0)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, n: int) -> float:
        """Take ``n`` tokens; return 0 when allowed, else seconds to wait before retrying."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        tokens = self._tokens(key, now)
        need = min(n, self.capacity)
        if tokens >= need:
            self._buckets[key] = (tokens - need, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (need - tokens) / self.rate

    def exhausted(self, key: str) -> float:
        """Seconds until ``key`` has a token again (0 when it has one); takes nothing.

        Checked before reading a body, so a client over its rate costs no parsing.

        >>> rl = RateLimiter(rate=10, clock=lambda: 0.0)
        >>> rl.take("k", 10), rl.exhausted("k"), rl.exhausted("other")
        (0.0, 0.1, 0.0)
        """
        if self.rate <= 0:
            return 0.0
        tokens = self._tokens(key, self.clock())
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def _tokens(self, key: str, now: float) -> float:
        """Tokens ``key`` has at ``now``: refilled at ``rate`` since its last take (full if new)."""
        tokens, last = self._buckets.get(key, (self.capacity, now))
        return min(self.capacity, tokens + (now - last) * self.rate)


@dataclass
class BodyResult:
    status: int
    message: str = ""
    accepted: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    dlq: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    #: Segment event names dropped for want of a mapping (counted once Kafka acked)
    unmapped: dict[str, int] = field(default_factory=dict)

    def reject(
        self,
        index: int,
        reason: str,
        detail: str,
        payload: bytes,
        received_ms: int,
        key: bytes | None = None,
    ) -> None:
        """Item ``index`` goes to the DLQ with ``reason``; the answer lists it."""
        self.errors.append({"index": index, "reason": reason, "detail": detail})
        self.dlq.append((key, dlq_record(reason, detail, payload, received_ms)))

    @property
    def reasons(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.errors:
            out[e["reason"]] = out.get(e["reason"], 0) + 1
        return out


def _key_of(item: dict[str, Any]) -> bytes | None:
    uid = item.get("user_id") or item.get("anonymous_id")
    return uid.encode() if isinstance(uid, str) else None


def parse_body(body: bytes, limit: int = MAX_BODY_BYTES) -> Any:
    """The parsed JSON body, or a refusing :class:`BodyResult` (413 or 400).

    >>> parse_body(b'{"a": 1}'), parse_body(b'{').status, parse_body(b'[1, 2]', limit=5).status
    ({'a': 1}, 400, 413)
    """
    if len(body) > limit:
        return BodyResult(413, f"body is {len(body)} bytes; send at most {limit} per request")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return BodyResult(400, f"body is not valid JSON ({exc}); send one event object or an array")


def classify_body(body: bytes, received_ms: int) -> BodyResult:
    """Split a request body into events to write and rejected items (by index)."""
    parsed = parse_body(body)
    if isinstance(parsed, BodyResult):
        return parsed
    return classify_parsed(parsed, received_ms, body)


def classify_parsed(parsed: Any, received_ms: int, body: bytes) -> BodyResult:
    """Split a parsed ``body`` (one event object or an array of them) into events to
    write and rejected items (by index)."""
    if isinstance(parsed, dict):
        items: list[Any] = [parsed]
    elif isinstance(parsed, list):
        items = parsed
        if len(items) > MAX_ITEMS:
            return BodyResult(413, f"{len(items)} events in one request; send at most {MAX_ITEMS}")
        if not items:
            return BodyResult(400, "empty array: send at least one event")
    else:
        return BodyResult(400, "body must be a JSON object (one event) or an array of events")
    return classify_items(items, received_ms, body)


def classify_items(items: list[Any], received_ms: int, body: bytes) -> BodyResult:
    """Validate every item: valid events to write (keyed by user), the rest to the DLQ
    with per-index errors (an item that cannot be serialised again is quoted as the
    whole ``body``). The status is 202 whatever the items."""
    out = BodyResult(202)
    for index, item in enumerate(items):
        checked = check_event(item, received_ms)
        key = _key_of(item) if isinstance(item, dict) else None
        if isinstance(item, dict) and "context" in item:
            item = dict(item)
            protect(item, None)  # the full IP address never reaches Kafka
        try:
            raw = orjson.dumps(item)
        except TypeError:  # orjson stops at 254 levels of nesting, parsing allows more
            raw = body
            checked = Rejection(
                "schema", "event is nested too deeply: keep objects under 254 levels"
            )
        if isinstance(checked, Rejection):
            out.reject(index, checked.reason, checked.detail, raw, received_ms, key)
        else:
            out.accepted.append((key, raw))
    return out
