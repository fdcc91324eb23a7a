"""Vendor adapters: user-level triggers as Braze, Customer.io and Klaviyo API requests.

A ``PULSE_DELIVERY`` endpoint with ``type: braze``, ``customerio`` or
``klaviyo`` gets the vendor's own request instead of a signed webhook. Only
user-level actions (``user.send_offer``, ``user.send_reminder``) go to
adapters; campaign-level actions go to a generic webhook. Everything here is
plain data in, plain data out: ``pulse deliver`` sends what it returns.

Vendor references the request templates follow:

* Braze, send API-triggered campaign messages (``POST /campaigns/trigger/send``,
  ``Authorization: Bearer``, up to 50 recipients each with its own
  ``trigger_properties``; duplicated recipients are deduped by Braze):
  https://braze.com/docs/api/endpoints/messaging/send_messages/post_send_triggered_campaigns/
  and https://www.braze.com/docs/api/objects_filters/recipient_object/ ;
  rate-limit headers: https://braze.com/docs/api/messaging_api/rate_limits
* Customer.io Track API, track a customer event (``POST
  /api/v1/customers/{identifier}/events``, Basic ``site_id:api_key``, body
  ``{name, data, timestamp, id}``; ``track-eu`` for the EU region; ``id`` must
  be a ULID and an event whose ``id`` was seen is not processed again):
  https://docs.customer.io/integrations/api/track/tag/track-events/track/ and
  https://docs.customer.io/api/track/
* Klaviyo, Create Event (``POST https://a.klaviyo.com/api/events``,
  ``Authorization: Klaviyo-API-Key``, a ``revision`` header, a JSON:API body;
  a repeated ``unique_id`` for the same profile and metric is recorded once):
  https://developers.klaviyo.com/en/reference/create_event

>>> braze = Adapter("braze", "https://rest.iad-01.braze.com", "key", campaign_id="cmp-9")
>>> t = {"trigger_id": "t1", "action": "user.send_offer", "created_at": 1700000000000,
...      "target": {"user_id": "u1", "campaign_id": "c1"}, "params": {"offer": {"pct": 10}}}
>>> r = braze.request([t])
>>> r.url, r.json()["recipients"][0]["external_user_id"]
('https://rest.iad-01.braze.com/campaigns/trigger/send', 'u1')
>>> Adapter("klaviyo", KLAVIYO_URL, "pk_x").request([t]).json()["data"]["attributes"]["unique_id"]
't1'
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import orjson

from stream.core.durations import parse_duration
from stream.core.errors import ConfigError
from stream.core.rules import CAMPAIGN_ACTIONS

TYPES = ("braze", "customerio", "klaviyo")
USER_ACTIONS = ("user.send_offer", "user.send_reminder")
BRAZE_MAX_RECIPIENTS = 50
CUSTOMERIO_URLS = {"us": "https://track.customer.io", "eu": "https://track-eu.customer.io"}
KLAVIYO_URL = "https://a.klaviyo.com"
#: the Klaviyo API revision sent when the endpoint names none
KLAVIYO_REVISION = "2026-10-15"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


class AdapterError(ValueError):
    """A trigger the adapter cannot turn into a request (e.g. no ``target.user_id``)."""


@dataclass(frozen=True)
class HttpRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass(frozen=True)
class Adapter:
    """One vendor endpoint's settings; :meth:`request` builds the HTTP request.

    ``campaigns`` (Braze) and ``events`` (Customer.io, Klaviyo) map a Pulse
    action to the Braze campaign id / the event (metric) name; without an entry
    the Braze ``campaign_id`` and the action's own name are used.
    """

    kind: str
    base_url: str
    api_key: str
    site_id: str = ""
    campaign_id: str = ""
    campaigns: tuple[tuple[str, str], ...] = ()
    events: tuple[tuple[str, str], ...] = ()
    revision: str = KLAVIYO_REVISION
    batch_size: int = BRAZE_MAX_RECIPIENTS
    linger_s: float = 1.0

    @property
    def batches(self) -> bool:
        """Braze takes many recipients per request; the others one trigger each."""
        return self.kind == "braze"

    def batch_key(self, trigger: Mapping[str, Any]) -> str:
        """The Braze campaign a trigger goes to: only triggers of one campaign share a request."""
        action = str(trigger.get("action", ""))
        campaign = dict(self.campaigns).get(action) or self.campaign_id
        if not campaign:
            raise AdapterError(f"no Braze campaign for {action!r}: add it under campaigns:")
        return campaign

    def check(self, trigger: Mapping[str, Any]) -> str | None:
        """Why this trigger cannot be sent (dead-lettered as ``rejected``), or None."""
        try:
            user_id(trigger)
            if self.batches:
                self.batch_key(trigger)
        except AdapterError as exc:
            return f"invalid trigger: {exc}"
        return None

    def event_name(self, trigger: Mapping[str, Any]) -> str:
        action = str(trigger.get("action", ""))
        return dict(self.events).get(action) or action

    def request(self, triggers: Sequence[Mapping[str, Any]]) -> HttpRequest:
        if self.kind == "braze":
            return braze_request(self, triggers)
        if len(triggers) != 1:
            raise ValueError(f"{self.kind} takes one trigger per request, got {len(triggers)}")
        if self.kind == "customerio":
            return customerio_request(self, triggers[0])
        return klaviyo_request(self, triggers[0])


# --- the trigger's fields, as every vendor gets them ---------------------------------------


def user_id(trigger: Mapping[str, Any]) -> str:
    target = trigger.get("target")
    user = target.get("user_id") if isinstance(target, Mapping) else None
    if not isinstance(user, str) or not user:
        raise AdapterError("target.user_id is missing: a vendor adapter needs the user")
    return user


def properties(trigger: Mapping[str, Any]) -> dict[str, Any]:
    """The trigger as flat event properties: its ``params`` (offer, journey, step, items)
    plus trigger_id, action, rule, campaign_id, reason, score (evidence.score), created_at.

    >>> properties({"trigger_id": "t1", "action": "user.send_offer", "evidence": {"score": 0.9},
    ...             "target": {"user_id": "u1", "campaign_id": "c1"}, "params": {"offer": 1}})
    {'offer': 1, 'trigger_id': 't1', 'action': 'user.send_offer', 'campaign_id': 'c1', 'score': 0.9}
    """
    params = trigger.get("params")
    target = trigger.get("target")
    evidence = trigger.get("evidence")
    out: dict[str, Any] = dict(params) if isinstance(params, Mapping) else {}
    core = {
        "trigger_id": trigger.get("trigger_id"),
        "action": trigger.get("action"),
        "rule": trigger.get("rule"),
        "campaign_id": target.get("campaign_id") if isinstance(target, Mapping) else None,
        "reason": trigger.get("reason"),
        "score": evidence.get("score") if isinstance(evidence, Mapping) else None,
        "created_at": trigger.get("created_at"),
    }
    out.update({k: v for k, v in core.items() if v is not None})
    return out


def _created_ms(trigger: Mapping[str, Any]) -> int | None:
    value = trigger.get("created_at")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return int(value)
    return None


def ulid(time_ms: int, key: str) -> str:
    """A deterministic ULID: 48 bits of ``time_ms``, 80 bits of SHA-256(``key``).

    Customer.io dedupes events on a ULID ``id``; the same trigger always gets the same one.

    >>> ulid(1700000000000, "t1") == ulid(1700000000000, "t1"), len(ulid(0, "t1"))
    (True, 26)
    >>> ulid(1469918176385, "x")[:10]  # the time part, as in the ULID spec's example
    '01ARYZ6S41'
    """
    rand = int.from_bytes(hashlib.sha256(key.encode()).digest()[:10], "big")
    n = ((time_ms & (2**48 - 1)) << 80) | rand
    return "".join(_CROCKFORD[(n >> (5 * (25 - i))) & 31] for i in range(26))


def customerio_event_id(trigger: Mapping[str, Any]) -> str:
    return ulid(_created_ms(trigger) or 0, str(trigger.get("trigger_id", "")))


# --- the three requests --------------------------------------------------------------------


def braze_request(adapter: Adapter, triggers: Sequence[Mapping[str, Any]]) -> HttpRequest:
    """``POST {rest endpoint}/campaigns/trigger/send``: one recipient per trigger, all of one
    campaign, at most 50, one user at most once (Braze would dedupe a repeated one away)."""
    if not 1 <= len(triggers) <= BRAZE_MAX_RECIPIENTS:
        raise ValueError(f"a Braze request takes 1 to 50 recipients, got {len(triggers)}")
    campaigns = {adapter.batch_key(t) for t in triggers}
    if len(campaigns) != 1:
        raise ValueError(f"one Braze request per campaign, got {sorted(campaigns)}")
    recipients = [
        {"external_user_id": user_id(t), "trigger_properties": properties(t)} for t in triggers
    ]
    if len({r["external_user_id"] for r in recipients}) != len(recipients):
        raise ValueError("a user appears twice in one Braze request")
    body = {"campaign_id": campaigns.pop(), "recipients": recipients}
    return HttpRequest(
        "POST",
        f"{adapter.base_url}/campaigns/trigger/send",
        {"content-type": "application/json", "authorization": f"Bearer {adapter.api_key}"},
        orjson.dumps(body),
    )


def customerio_request(adapter: Adapter, trigger: Mapping[str, Any]) -> HttpRequest:
    """``POST {track}/api/v1/customers/{user}/events`` with ``{name, data, timestamp, id}``.

    >>> a = Adapter("customerio", CUSTOMERIO_URLS["eu"], "key", site_id="site")
    >>> r = customerio_request(a, {"trigger_id": "t1", "action": "user.send_reminder",
    ...     "target": {"user_id": "u/1"}, "created_at": 1700000000500})
    >>> r.url, r.headers["authorization"], r.json()["timestamp"]
    ('https://track-eu.customer.io/api/v1/customers/u%2F1/events', 'Basic c2l0ZTprZXk=', 1700000000)
    """
    user = user_id(trigger)
    body: dict[str, Any] = {
        "name": adapter.event_name(trigger),
        "data": properties(trigger),
        "id": customerio_event_id(trigger),
    }
    created = _created_ms(trigger)
    if created is not None:
        body["timestamp"] = created // 1000
    basic = base64.b64encode(f"{adapter.site_id}:{adapter.api_key}".encode()).decode()
    return HttpRequest(
        "POST",
        f"{adapter.base_url}/api/v1/customers/{quote(user, safe='')}/events",
        {"content-type": "application/json", "authorization": f"Basic {basic}"},
        orjson.dumps(body),
    )


def klaviyo_request(adapter: Adapter, trigger: Mapping[str, Any]) -> HttpRequest:
    """``POST https://a.klaviyo.com/api/events``: a JSON:API event with the metric by name,
    the profile by ``external_id``, the properties, ``time`` and ``unique_id`` = trigger_id."""
    attributes: dict[str, Any] = {
        "properties": properties(trigger),
        "metric": {"data": {"type": "metric", "attributes": {"name": adapter.event_name(trigger)}}},
        "profile": {"data": {"type": "profile", "attributes": {"external_id": user_id(trigger)}}},
        "unique_id": str(trigger.get("trigger_id", "")),
    }
    created = _created_ms(trigger)
    if created is not None:
        stamp = datetime.fromtimestamp(created // 1000, tz=UTC)
        attributes["time"] = stamp.isoformat()
    return HttpRequest(
        "POST",
        f"{adapter.base_url}/api/events",
        {
            "content-type": "application/vnd.api+json",
            "accept": "application/vnd.api+json",
            "authorization": f"Klaviyo-API-Key {adapter.api_key}",
            "revision": adapter.revision,
        },
        orjson.dumps({"data": {"type": "event", "attributes": attributes}}),
    )


def retry_after(headers: Mapping[str, str], now_s: float) -> str | None:
    """The wait a vendor asks for: ``Retry-After``, else Braze's ``X-RateLimit-Retry-After``
    (seconds), else its ``X-RateLimit-Reset`` (epoch seconds) as seconds from now.

    >>> retry_after({"X-RateLimit-Reset": "1030"}, 1000.0), retry_after({}, 0.0)
    ('30', None)
    """
    h = {k.lower(): v for k, v in headers.items()}
    for name in ("retry-after", "x-ratelimit-retry-after"):
        if h.get(name):
            return h[name]
    reset = h.get("x-ratelimit-reset", "")
    try:
        return str(max(0, round(float(reset) - now_s)))
    except ValueError:
        return None


# --- batching (Braze) ------------------------------------------------------------------------

T = TypeVar("T")


@dataclass
class _Open(Generic[T]):
    opened: float
    items: list[T] = field(default_factory=list)
    users: set[str] = field(default_factory=set)


class Batcher(Generic[T]):
    """Groups items per key (the Braze campaign) into batches of at most ``size``, each
    sent when full or ``linger_s`` after its first item; an item whose user is already in
    the open batch closes it and starts the next one.

    >>> b = Batcher(size=2, linger_s=1.0)
    >>> b.add("c", "u1", "t1", now=0.0), b.add("c", "u1", "t2", now=0.1)
    ([], [['t1']])
    >>> b.add("c", "u2", "t3", now=0.2), b.next_due()
    ([['t2', 't3']], None)
    >>> b.add("c", "u3", "t4", now=0.5), b.next_due(), b.due(1.2), b.due(1.5)
    ([], 1.5, [], [['t4']])
    """

    def __init__(self, size: int = BRAZE_MAX_RECIPIENTS, linger_s: float = 1.0) -> None:
        self.size = size
        self.linger_s = linger_s
        self.open: dict[str, _Open[T]] = {}

    def add(self, key: str, user: str, item: T, now: float) -> list[list[T]]:
        """Add ``item``; returns the batches to send now."""
        ready = []
        batch = self.open.get(key)
        if batch is not None and user in batch.users:
            ready.append(self.open.pop(key).items)
            batch = None
        if batch is None:
            batch = self.open[key] = _Open(now)
        batch.items.append(item)
        batch.users.add(user)
        if len(batch.items) >= self.size:
            ready.append(self.open.pop(key).items)
        return ready

    def next_due(self) -> float | None:
        """When the oldest open batch is due (monotonic seconds), None with none open."""
        return min((b.opened + self.linger_s for b in self.open.values()), default=None)

    def due(self, now: float) -> list[list[T]]:
        keys = [k for k, b in self.open.items() if b.opened + self.linger_s <= now]
        return [self.open.pop(k).items for k in keys]

    def drain(self) -> list[list[T]]:
        out = [b.items for b in self.open.values()]
        self.open.clear()
        return out


# --- configuration -----------------------------------------------------------------------------

_KEYS = {
    "braze": ("campaign_id", "campaigns", "batch", "linger"),
    "customerio": ("site_id", "region", "events"),
    "klaviyo": ("revision", "events"),
}


def _credential(item: Mapping[str, Any], key: str, where: str, env: Mapping[str, str]) -> str:
    """A credential inline, or ``${NAME}``: read from the environment at load."""
    value = item.get(key)
    if not isinstance(value, str | int) or isinstance(value, bool) or not str(value).strip():
        raise ConfigError(
            f"{where}: {key} is required: write it as {key}: ${{SOME_ENV_VAR}} (read from the "
            "environment when pulse deliver starts) or inline"
        )
    text = str(value).strip()
    ref = _ENV_REF.match(text)
    if ref is None:
        if "${" in text:
            raise ConfigError(f"{where}: {key}: write an environment reference alone, as ${{NAME}}")
        return text
    resolved = env.get(ref.group(1), "").strip()
    if not resolved:
        raise ConfigError(
            f"{where}: {key} refers to ${{{ref.group(1)}}}, which is not set in the environment: "
            f"export {ref.group(1)} for pulse deliver, or write the {key} inline"
        )
    return resolved


def _mapping(
    item: Mapping[str, Any], key: str, actions: Sequence[str], where: str
) -> tuple[tuple[str, str], ...]:
    value = item.get(key) or {}
    if not isinstance(value, Mapping) or not all(
        isinstance(v, str | int) and str(v).strip() for v in value.values()
    ):
        raise ConfigError(
            f"{where}: {key} must map an action to a name, e.g. {{user.send_offer: x}}"
        )
    for action in value:
        if not any(fnmatch.fnmatchcase(str(action), g) for g in actions):
            raise ConfigError(f"{where}: {key}: {action!r} is not among this endpoint's actions")
    return tuple((str(k), str(v).strip()) for k, v in value.items())


def _base_url(value: Any, where: str, default: str | None, example: str) -> str:
    if value is None and default is not None:
        return default
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: url must be an http:// or https:// URL, e.g. {example}")
    return value.rstrip("/")


def parse_actions(value: Any, where: str, example: str) -> list[str]:
    """An endpoint's ``actions``: one glob or a non-empty list of them.

    >>> parse_actions("user.*", "x", "user.*")
    ['user.*']
    """
    actions = [value] if isinstance(value, str) else value
    if (
        not isinstance(actions, list)
        or not actions
        or not all(isinstance(a, str) and a for a in actions)
    ):
        raise ConfigError(f'{where}: actions must be a list of globs, e.g. ["{example}"]')
    return actions


def parse_adapter(
    item: Mapping[str, Any], kind: str, source: str, index: int, env: Mapping[str, str]
) -> tuple[str, tuple[str, ...], Adapter]:
    """Validate one ``type: braze | customerio | klaviyo`` endpoint: its url (the vendor
    base URL, which names the endpoint in retry and DLQ records), actions and adapter."""
    where = f"{source}: endpoints[{index}]"
    if kind not in TYPES:
        raise ConfigError(f"{where}: type {kind!r} is unknown; use webhook (the default), {TYPES}")
    if "secret" in item or "secrets" in item:
        raise ConfigError(
            f"{where}: a {kind} endpoint takes no webhook secret (its requests carry the "
            "vendor's api_key); remove secret/secrets, or use type: webhook for a signed webhook"
        )
    allowed = {"type", "url", "actions", "api_key", *_KEYS[kind]}
    extra = set(item) - allowed
    if extra:
        raise ConfigError(
            f"{where}: unknown keys {sorted(extra)} for type: {kind}; use {sorted(allowed)}"
        )
    if kind == "braze":
        example = "https://rest.iad-01.braze.com (Braze: Settings > APIs and Identifiers)"
        url = _base_url(item.get("url"), where, None, example)
    elif kind == "customerio":
        region = str(item.get("region", "us")).lower()
        if region not in CUSTOMERIO_URLS:
            raise ConfigError(f"{where}: region must be us or eu (your workspace's data center)")
        url = _base_url(item.get("url"), where, CUSTOMERIO_URLS[region], CUSTOMERIO_URLS[region])
    else:
        url = _base_url(item.get("url"), where, KLAVIYO_URL, KLAVIYO_URL)
    where = f"{source}: {kind} endpoint {url}"
    actions = parse_actions(item.get("actions", ["user.*"]), where, "user.*")
    campaign_level = [
        a for a in CAMPAIGN_ACTIONS if any(fnmatch.fnmatchcase(a, g) for g in actions)
    ]
    if campaign_level:
        raise ConfigError(
            f"{where}: actions {actions} match campaign-level actions {campaign_level}; a {kind} "
            f"endpoint takes user-level actions only ({', '.join(USER_ACTIONS)}): use e.g. "
            'actions: ["user.*"] and send campaign.* to a generic webhook endpoint (type: webhook)'
        )
    user_level = [a for a in USER_ACTIONS if any(fnmatch.fnmatchcase(a, g) for g in actions)]
    if not user_level:
        raise ConfigError(f"{where}: actions {actions} match no user-level action {USER_ACTIONS}")
    api_key = _credential(item, "api_key", where, env)
    if kind == "braze":
        campaign_id = str(item.get("campaign_id") or "").strip()
        campaigns = _mapping(item, "campaigns", actions, where)
        missing = [a for a in user_level if not (dict(campaigns).get(a) or campaign_id)]
        if missing:
            raise ConfigError(
                f"{where}: no Braze campaign for {missing}: set campaign_id: (the API-triggered "
                "campaign's id) or campaigns: {action: campaign id}"
            )
        batch = item.get("batch", BRAZE_MAX_RECIPIENTS)
        if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= 50:
            raise ConfigError(f"{where}: batch must be a whole number from 1 to 50 (Braze's limit)")
        try:
            linger = parse_duration(str(item.get("linger", "1s")))
        except ValueError as exc:
            raise ConfigError(f"{where}: linger: {exc}") from None
        adapter = Adapter(
            kind, url, api_key, campaign_id=campaign_id, campaigns=campaigns,
            batch_size=batch, linger_s=linger,
        )  # fmt: skip
    elif kind == "customerio":
        site_id = _credential(item, "site_id", where, env)
        events = _mapping(item, "events", actions, where)
        adapter = Adapter(kind, url, api_key, site_id=site_id, events=events)
    else:
        revision = str(item.get("revision", KLAVIYO_REVISION))
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}(\.[a-z]+)?", revision):
            raise ConfigError(
                f"{where}: revision must be a Klaviyo API revision such as 2026-10-15"
            )
        events = _mapping(item, "events", actions, where)
        adapter = Adapter(kind, url, api_key, revision=revision, events=events)
    return url, tuple(actions), adapter
