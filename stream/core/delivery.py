"""Webhook delivery decisions, as plain data: config, matching, signing, outcomes, retries.

``pulse deliver`` (:mod:`stream.tools.deliver`) does the I/O; everything it
decides is here and unit-tested without a broker or a network.

The ``PULSE_DELIVERY`` YAML names the endpoints; a trigger goes to every
endpoint whose ``actions`` globs (:func:`fnmatch.fnmatchcase`) match its action:

>>> cfg = parse_config('''
... endpoints:
...   - url: https://engine.example/hooks/pulse
...     actions: ["campaign.*"]
...     secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
... schedule: [5s, 1m]
... ''')
>>> [e.url for e in cfg.matching("campaign.pause")], cfg.matching("user.send_offer")
(['https://engine.example/hooks/pulse'], [])
>>> cfg.schedule, cfg.max_attempts
((5.0, 60.0), 3)

An endpoint with ``type: braze | customerio | klaviyo`` gets the vendor's API
request instead (:mod:`stream.core.adapters`), for user-level actions only:

>>> cfg = parse_config('''
... endpoints:
...   - type: klaviyo
...     api_key: ${KLAVIYO_KEY}
...     actions: ["user.*"]
... ''', env={"KLAVIYO_KEY": "pk_123"})
>>> e = cfg.matching("user.send_offer")[0]; e.kind, e.url, e.adapter.api_key
('klaviyo', 'https://a.klaviyo.com', 'pk_123')

A response is classified (:func:`classify`): 2xx delivered; 408, 429, 5xx,
network errors and timeouts are retried; 410 and every other status are final:

>>> classify(204), classify(503), classify(None), classify(410), classify(400)
('delivered', 'retry', 'retry', 'final', 'final')
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import yaml
from standardwebhooks.webhooks import Webhook

from stream.core.adapters import Adapter, parse_actions, parse_adapter
from stream.core.durations import parse_duration
from stream.core.errors import ConfigError
from stream.core.rules import CAMPAIGN_ACTIONS

#: Waits before the 2nd, 3rd, ... try (seconds): 5 s, 5 min, 30 min, 2 h, 5 h, 10 h.
DEFAULT_SCHEDULE: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0)
DEFAULT_CONCURRENCY = 8
DEFAULT_TIMEOUT_S = 10.0

Outcome = Literal["delivered", "retry", "final"]
#: the ``outcome`` label values of ``pulse_deliveries_total``
OUTCOMES = ("delivered", "retried", "dead_lettered")
#: the ``action`` label values (PRODUCT.md, "Trigger"); anything else counts as ``other``
ACTIONS = (*CAMPAIGN_ACTIONS, "user.send_offer", "user.send_reminder")


@dataclass(frozen=True)
class Endpoint:
    """One receiver: where to POST, which actions, the signing secrets, extra headers;
    or, with ``adapter``, a vendor API (``url`` is then its base URL, and no secrets)."""

    url: str
    actions: tuple[str, ...]
    secrets: tuple[str, ...]
    headers: tuple[tuple[str, str], ...] = ()
    _signers: tuple[Webhook, ...] = field(default=(), compare=False, repr=False)
    adapter: Adapter | None = None

    @property
    def kind(self) -> str:
        """``webhook``, ``braze``, ``customerio`` or ``klaviyo``."""
        return self.adapter.kind if self.adapter is not None else "webhook"

    def matches(self, action: str) -> bool:
        return any(fnmatch.fnmatchcase(action, glob) for glob in self.actions)

    def signers(self) -> tuple[Webhook, ...]:
        return self._signers or tuple(Webhook(s) for s in self.secrets)


@dataclass(frozen=True)
class DeliveryConfig:
    endpoints: tuple[Endpoint, ...]
    schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    concurrency: int = DEFAULT_CONCURRENCY
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def max_attempts(self) -> int:
        """Tries per trigger and endpoint: the first one plus one per schedule step."""
        return len(self.schedule) + 1

    def matching(self, action: str) -> list[Endpoint]:
        return [e for e in self.endpoints if e.matches(action)]

    def endpoint(self, url: str) -> Endpoint | None:
        return next((e for e in self.endpoints if e.url == url), None)


def parse_schedule(value: Any, where: str = "schedule") -> tuple[float, ...]:
    """A retry schedule from ``"5s, 5m, 30m"`` or a YAML list of durations.

    >>> parse_schedule("0.5s, 2, 1m")
    (0.5, 2.0, 60.0)
    >>> parse_schedule([])
    ()
    """
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(f"{where}: expected a list of durations such as [5s, 5m, 30m]")
    out = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        try:
            seconds = parse_duration(text)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if seconds < 0:
            raise ConfigError(f"{where}: {text!r} is negative")
        out.append(float(seconds))
    return tuple(out)


def _check_secret(secret: Any, where: str) -> str:
    if not isinstance(secret, str) or not secret.strip():
        raise ConfigError(f"{where}: secret must be a Standard Webhooks secret (whsec_<base64>)")
    key = secret.strip()
    raw = key.removeprefix("whsec_")
    try:
        decoded = base64.b64decode(raw + "==", validate=False)
    except (binascii.Error, ValueError):
        decoded = b""
    if not decoded or not key.startswith("whsec_"):
        raise ConfigError(
            f"{where}: secret must look like whsec_<base64 key> (Standard Webhooks), "
            'e.g. generate one with: python -c "import base64,os;'
            "print('whsec_'+base64.b64encode(os.urandom(24)).decode())\""
        )
    return key


def parse_config(
    text: str | Mapping[str, Any],
    source: str = "PULSE_DELIVERY",
    schedule: str = "",
    env: Mapping[str, str] | None = None,
) -> DeliveryConfig:
    """Validate the delivery YAML (text or parsed); ``schedule`` (PULSE_DELIVERY_SCHEDULE)
    overrides its ``schedule:`` key; ``${NAME}`` credentials of adapter endpoints are read
    from ``env`` (default: the environment). Raises :class:`ConfigError` naming the bad entry."""
    if isinstance(text, str):
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML ({exc})") from None
    else:
        doc = text
    if not isinstance(doc, Mapping) or not isinstance(doc.get("endpoints"), list):
        raise ConfigError(f"{source}: expected a mapping with an `endpoints:` list")
    unknown = set(doc) - {"endpoints", "schedule", "concurrency", "timeout"}
    if unknown:
        raise ConfigError(
            f"{source}: unknown keys {sorted(unknown)}; "
            "use endpoints, schedule, concurrency, timeout"
        )
    endpoints = []
    seen: set[str] = set()
    for i, item in enumerate(doc["endpoints"]):
        where = f"{source}: endpoints[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where}: expected a mapping with url, actions, secret")
        kind = item.get("type", "webhook")
        if kind != "webhook":
            base, adapter_actions, adapter = parse_adapter(
                item, str(kind), source, i, os.environ if env is None else env
            )
            if base in seen:  # endpoints are told apart by url, in retry and DLQ records too
                raise ConfigError(f"{where}: {base} is listed twice; merge its actions into one")
            seen.add(base)
            endpoints.append(Endpoint(base, adapter_actions, (), adapter=adapter))
            continue
        extra = set(item) - {"type", "url", "actions", "secret", "secrets", "headers"}
        if extra:
            raise ConfigError(f"{where}: unknown keys {sorted(extra)}")
        url = item.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}: url must be an http:// or https:// URL, got {url!r}")
        if url in seen:
            raise ConfigError(f"{where}: {url} is listed twice; merge its actions into one entry")
        seen.add(url)
        where = f"{source}: endpoint {url}"
        actions = parse_actions(item.get("actions"), where, "campaign.*")
        raw_secrets = item.get("secrets", item.get("secret"))
        if isinstance(raw_secrets, str):
            raw_secrets = raw_secrets.split()
        if not isinstance(raw_secrets, list) or not raw_secrets:
            raise ConfigError(
                f"{where}: a secret is required (secret: whsec_...; list two under secrets: "
                "while rotating)"
            )
        secrets = tuple(_check_secret(s, where) for s in raw_secrets)
        headers = item.get("headers") or {}
        if not isinstance(headers, Mapping):
            raise ConfigError(f"{where}: headers must be a mapping of name: value")
        reserved = {h.lower() for h in headers} & {
            "webhook-id",
            "webhook-timestamp",
            "webhook-signature",
            "content-type",
        }
        if reserved:
            raise ConfigError(f"{where}: headers may not set {sorted(reserved)}")
        endpoints.append(
            Endpoint(
                url=url,
                actions=tuple(actions),
                secrets=secrets,
                headers=tuple((str(k), str(v)) for k, v in headers.items()),
                _signers=tuple(Webhook(s) for s in secrets),
            )
        )
    if schedule.strip():
        steps = parse_schedule(schedule, "PULSE_DELIVERY_SCHEDULE")
    elif "schedule" in doc:
        steps = parse_schedule(doc["schedule"], f"{source}: schedule")
    else:
        steps = DEFAULT_SCHEDULE
    concurrency = doc.get("concurrency", DEFAULT_CONCURRENCY)
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ConfigError(f"{source}: concurrency must be a whole number ≥ 1")
    try:
        timeout = parse_duration(str(doc.get("timeout", DEFAULT_TIMEOUT_S)))
    except ValueError as exc:
        raise ConfigError(f"{source}: timeout: {exc}") from None
    if timeout <= 0:
        raise ConfigError(f"{source}: timeout must be positive")
    return DeliveryConfig(tuple(endpoints), steps, concurrency, timeout)


def load_config(path: str, schedule: str = "") -> DeliveryConfig:
    """Read and validate the file ``PULSE_DELIVERY`` names."""
    if not path:
        raise ConfigError(
            "PULSE_DELIVERY is not set: point it at a YAML file listing the webhook endpoints "
            "(see README, Webhook delivery)"
        )
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"PULSE_DELIVERY={path!r}: cannot read it ({exc.strerror})") from None
    return parse_config(text, f"PULSE_DELIVERY={path}", schedule)


# --- signing ---------------------------------------------------------------------------


def sign_headers(endpoint: Endpoint, msg_id: str, body: bytes, now_s: float) -> dict[str, str]:
    """Standard Webhooks headers; one ``v1,`` signature per secret (rotation), space-separated.

    >>> e = parse_config({"endpoints": [{"url": "http://x", "actions": ["*"],
    ...     "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]}).endpoints[0]
    >>> h = sign_headers(e, "t1", b'{"a":1}', 1700000000.5)
    >>> h["webhook-id"], h["webhook-timestamp"], h["webhook-signature"][:3]
    ('t1', '1700000000', 'v1,')
    """
    stamp = datetime.fromtimestamp(int(now_s), tz=UTC)
    signatures = " ".join(w.sign(msg_id, stamp, body) for w in endpoint.signers())
    headers = dict(endpoint.headers)
    headers.update(
        {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now_s)),
            "webhook-signature": signatures,
        }
    )
    return headers


# --- outcomes and the retry schedule -----------------------------------------------------


def classify(status: int | None) -> Outcome:
    """``status`` None means no response (network error, timeout)."""
    if status is None:
        return "retry"
    if 200 <= status < 300:
        return "delivered"
    if status in (408, 429) or status >= 500:
        return "retry"
    return "final"


def parse_retry_after(value: str | None, now_s: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date).

    >>> parse_retry_after("7", 0), parse_retry_after("Thu, 01 Jan 1970 00:01:00 GMT", 30.0)
    (7.0, 30.0)
    >>> parse_retry_after("soon", 0) is None
    True
    """
    if not value:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now_s)


def retry_delay(
    attempts: int,
    schedule: Sequence[float],
    rng: random.Random,
    retry_after_s: float | None = None,
) -> float:
    """Seconds to wait after ``attempts`` failed tries (1 = the first), before the next one.

    Exponential steps with full jitter between them: the wait after try ``n`` is
    drawn uniformly from ``[schedule[n-2], schedule[n-1]]`` (``[0, schedule[0]]``
    after the first try), so a burst of failures spreads out and the waits still
    grow. A ``Retry-After`` longer than that is honoured, capped at the longest
    step of the schedule.

    >>> rng = random.Random(1)
    >>> 0 <= retry_delay(1, (5, 300), rng) <= 5, 5 <= retry_delay(2, (5, 300), rng) <= 300
    (True, True)
    >>> retry_delay(1, (5, 300), rng, retry_after_s=120.0)
    120.0
    """
    if not 1 <= attempts <= len(schedule):
        raise ValueError(f"no retry after try {attempts} with {len(schedule)} steps")
    high = float(schedule[attempts - 1])
    low = float(schedule[attempts - 2]) if attempts >= 2 else 0.0
    low = min(low, high)
    delay = rng.uniform(low, high)
    if retry_after_s is not None and retry_after_s > delay:
        delay = min(retry_after_s, max(schedule))
    return delay


@dataclass(frozen=True)
class Decision:
    """What to do after a try: ``delivered``, ``retry`` at ``due_ms``, or ``dead_letter``."""

    kind: Literal["delivered", "retry", "dead_letter"]
    due_ms: int = 0
    reason: str = ""


def decide(
    status: int | None,
    error: str,
    attempts: int,
    config: DeliveryConfig,
    now_ms: int,
    rng: random.Random,
    retry_after: str | None = None,
) -> Decision:
    """After try number ``attempts`` answered ``status`` (None: ``error``), what next.

    >>> cfg = DeliveryConfig(endpoints=(), schedule=(1.0,))
    >>> decide(200, "", 1, cfg, 0, random.Random(0)).kind
    'delivered'
    >>> d = decide(503, "", 1, cfg, 1000, random.Random(0)); d.kind, 1000 <= d.due_ms <= 2000
    ('retry', True)
    >>> decide(503, "", 2, cfg, 0, random.Random(0))
    Decision(kind='dead_letter', due_ms=0, reason='exhausted')
    >>> decide(410, "", 1, cfg, 0, random.Random(0)).reason
    'gone'
    """
    outcome = classify(status)
    if outcome == "delivered":
        return Decision("delivered")
    if outcome == "final":
        return Decision("dead_letter", reason="gone" if status == 410 else "rejected")
    if attempts >= config.max_attempts:
        return Decision("dead_letter", reason="exhausted")
    wait = retry_delay(
        attempts, config.schedule, rng, parse_retry_after(retry_after, now_ms / 1000)
    )
    return Decision("retry", due_ms=now_ms + int(wait * 1000))


@dataclass
class Circuit:
    """Per endpoint: after ``threshold`` failed tries in a row (no response, 5xx), send
    nothing for ``cooldown_s``; those tries fail at once (and go on through the schedule).

    So an endpoint that hangs until the timeout costs as little as one that refuses
    connections, and its requests in flight never pile up.

    >>> c = Circuit(threshold=2, cooldown_s=5)
    >>> c.record(False, 0.0); c.allow(0.1)
    True
    >>> c.record(False, 0.2); c.allow(0.3), c.allow(5.3)
    (False, True)
    >>> c.record(True, 5.4); c.failures
    0
    """

    threshold: int = 16
    cooldown_s: float = 5.0
    failures: int = 0
    open_until: float = 0.0

    def allow(self, now: float) -> bool:
        return now >= self.open_until

    def record(self, ok: bool, now: float) -> None:
        if ok:
            self.failures = 0
            return
        self.failures += 1
        if self.failures >= self.threshold:
            self.open_until = now + self.cooldown_s


def counts_against_circuit(status: int | None) -> bool:
    """No response or a 5xx: the endpoint is failing (4xx, 408 and 429 answer, so they do not).

    >>> [counts_against_circuit(s) for s in (None, 503, 429, 404, 200)]
    [True, True, False, False, False]
    """
    return status is None or status >= 500


# --- records on pulse.triggers.retry and pulse.triggers.dlq ------------------------------


def retry_record(
    trigger: Mapping[str, Any], url: str, attempt: int, due_ms: int, last_status: Any
) -> dict[str, Any]:
    """A scheduled try: ``attempt`` is the number of the try to make at ``due_ms``."""
    return {
        "trigger": dict(trigger),
        "endpoint": url,
        "attempt": attempt,
        "due_ms": due_ms,
        "last_status": last_status,
    }


def read_retry_record(value: Any) -> dict[str, Any] | None:
    """The retry record, or None when ``value`` is not one (skipped with a warning)."""
    if not isinstance(value, dict):
        return None
    trigger = value.get("trigger")
    if not isinstance(trigger, dict) or not isinstance(value.get("endpoint"), str):
        return None
    if not isinstance(value.get("attempt"), int) or not isinstance(value.get("due_ms"), int):
        return None
    return value


def dlq_record(
    trigger: Mapping[str, Any],
    url: str,
    reason: str,
    attempts: int,
    last_status: Any,
    failed_at_ms: int,
) -> dict[str, Any]:
    """``{"trigger", "endpoint", "reason", "attempts", "last_status", "failed_at"}``.

    ``reason``: ``exhausted`` (the schedule ran out), ``gone`` (410), ``rejected``
    (another final 4xx), ``unknown_endpoint`` (a retry for an endpoint no longer
    configured). ``last_status``: the HTTP status, or the network error's text.
    """
    return {
        "trigger": dict(trigger),
        "endpoint": url,
        "reason": reason,
        "attempts": attempts,
        "last_status": last_status,
        "failed_at": failed_at_ms,
    }


def trigger_created_ms(trigger: Mapping[str, Any]) -> int | None:
    """The trigger's ``created_at`` (epoch ms), or None when absent or not a number."""
    value = trigger.get("created_at")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return int(value)
    return None


def latency_s(trigger: Mapping[str, Any], now_ms: int | None = None) -> float | None:
    """Seconds from the trigger's creation to ``now_ms`` (delivery), None without created_at.

    >>> latency_s({"created_at": 1000}, 3500)
    2.5
    """
    created = trigger_created_ms(trigger)
    if created is None:
        return None
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return max(0.0, (now - created) / 1000)


def action_label(action: Any, known: Sequence[str] = ACTIONS) -> str:
    """The ``action`` label: a known action name, else ``other`` (labels stay bounded).

    >>> action_label("campaign.pause", ["campaign.pause"]), action_label("x" * 99, [])
    ('campaign.pause', 'other')
    """
    return action if isinstance(action, str) and action in known else "other"


def matches_glob(trigger: Mapping[str, Any], glob: str | None) -> bool:
    """For ``replay --action``: no glob matches everything."""
    return glob is None or fnmatch.fnmatchcase(str(trigger.get("action", "")), glob)
