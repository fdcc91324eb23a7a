"""Vendor adapters without a network: the Braze, Customer.io and Klaviyo request templates,
their configuration (credentials, ``${ENV}`` references, user-level actions only) and
Braze batching as pure decisions."""

from __future__ import annotations

import base64
import re
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from stream.core.adapters import (
    BRAZE_MAX_RECIPIENTS,
    CUSTOMERIO_URLS,
    KLAVIYO_REVISION,
    Adapter,
    AdapterError,
    Batcher,
    customerio_event_id,
    retry_after,
    ulid,
)
from stream.core.delivery import parse_config
from stream.core.errors import ConfigError
from stream.core.rules import CAMPAIGN_ACTIONS

ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CREATED = 1_767_225_600_123  # 2026-01-01T00:00:00.123Z
ENV = {"BRAZE_KEY": "braze-rest-key", "CIO_SITE": "site-1", "CIO_KEY": "cio-key", "KL": "pk_abc"}


def offer(n: int, user: str | None = None, action: str = "user.send_offer") -> dict[str, Any]:
    """A trigger shaped as stream.core.propensity emits ``user.send_offer``."""
    return {
        "trigger_id": f"user_offer:u{n}:{CREATED}",
        "action": action,
        "rule": "user_offer",
        "target": {"user_id": user or f"u{n}", "campaign_id": "cmp-1"},
        "reason": f"User u{n} clicked cmp-1 with purchase propensity 0.91",
        "evidence": {"score": 0.91, "threshold": 0.8},
        "params": {"offer": {"campaign_id": "cmp-2"}},
        "created_at": CREATED,
    }


def adapters(yaml_text: str, env: dict[str, str] = ENV) -> list[Adapter]:
    cfg = parse_config(yaml_text, "delivery.yaml", env=env)
    return [e.adapter for e in cfg.endpoints if e.adapter is not None]


BRAZE = """
endpoints:
  - type: braze
    url: https://rest.fra-01.braze.eu/
    api_key: ${BRAZE_KEY}
    campaign_id: braze-offer
    campaigns: {user.send_reminder: braze-reminder}
"""


# --- request templates ----------------------------------------------------------------------


def test_braze_request_carries_each_recipients_trigger_properties() -> None:
    (braze,) = adapters(BRAZE)
    triggers = [offer(n) for n in range(3)]
    r = braze.request(triggers)
    assert (r.method, r.url) == ("POST", "https://rest.fra-01.braze.eu/campaigns/trigger/send")
    assert r.headers["authorization"] == "Bearer braze-rest-key"
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["campaign_id"] == "braze-offer" and set(body) == {"campaign_id", "recipients"}
    first = body["recipients"][0]
    assert first["external_user_id"] == "u0"
    assert first["trigger_properties"] == {
        "offer": {"campaign_id": "cmp-2"},
        "trigger_id": f"user_offer:u0:{CREATED}",
        "action": "user.send_offer",
        "rule": "user_offer",
        "campaign_id": "cmp-1",
        "reason": "User u0 clicked cmp-1 with purchase propensity 0.91",
        "score": 0.91,
        "created_at": CREATED,
    }
    assert [x["external_user_id"] for x in body["recipients"]] == ["u0", "u1", "u2"]


def test_braze_campaign_per_action_and_request_limits() -> None:
    (braze,) = adapters(BRAZE)
    reminder = offer(1, action="user.send_reminder")
    assert braze.batch_key(reminder) == "braze-reminder"
    assert braze.batch_key(offer(1)) == "braze-offer"
    assert braze.request([reminder]).json()["campaign_id"] == "braze-reminder"
    with pytest.raises(ValueError, match="one Braze request per campaign"):
        braze.request([offer(1), offer(2, action="user.send_reminder")])
    with pytest.raises(ValueError, match="1 to 50 recipients"):
        braze.request([offer(n) for n in range(BRAZE_MAX_RECIPIENTS + 1)])
    assert len(braze.request([offer(n) for n in range(50)]).json()["recipients"]) == 50
    with pytest.raises(ValueError, match="a user appears twice"):
        braze.request([offer(1), offer(2, user="u1")])


def test_customerio_track_event() -> None:
    (cio,) = adapters(
        "endpoints: [{type: customerio, site_id: '${CIO_SITE}', api_key: '${CIO_KEY}'}]"
    )
    trigger = offer(7, user="ann@example.com")
    r = cio.request([trigger])
    assert r.url == "https://track.customer.io/api/v1/customers/ann%40example.com/events"
    scheme, token = r.headers["authorization"].split()
    assert scheme == "Basic" and base64.b64decode(token) == b"site-1:cio-key"
    body = r.json()
    assert set(body) == {"name", "data", "timestamp", "id"}
    assert body["name"] == "user.send_offer" and body["timestamp"] == CREATED // 1000
    assert body["data"]["trigger_id"] == trigger["trigger_id"]
    assert body["data"]["offer"] == {"campaign_id": "cmp-2"}
    assert ULID.match(body["id"]) and body["id"] == customerio_event_id(trigger)
    again = cio.request([dict(trigger)]).json()["id"]  # a redelivery: Customer.io dedupes it
    assert again == body["id"] and cio.request([offer(8)]).json()["id"] != body["id"]
    with pytest.raises(ValueError, match="one trigger per request"):
        cio.request([offer(1), offer(2)])


def test_customerio_eu_region_url_override_and_event_names() -> None:
    (eu,) = adapters(
        "endpoints: [{type: customerio, region: eu, site_id: s, api_key: k, "
        "events: {user.send_reminder: cart_reminder}}]"
    )
    assert eu.base_url == CUSTOMERIO_URLS["eu"] == "https://track-eu.customer.io"
    assert eu.request([offer(1, action="user.send_reminder")]).json()["name"] == "cart_reminder"
    assert eu.request([offer(1)]).json()["name"] == "user.send_offer"
    (local,) = adapters(
        "endpoints: [{type: customerio, url: 'http://127.0.0.1:9/cio/', site_id: s, api_key: k}]"
    )
    assert local.request([offer(1)]).url == "http://127.0.0.1:9/cio/api/v1/customers/u1/events"


def test_ulid_encodes_the_time_and_is_deterministic() -> None:
    value = ulid(CREATED, "t1")
    assert ULID.match(value) and value == ulid(CREATED, "t1") != ulid(CREATED, "t2")
    decoded = 0
    for ch in value[:10]:
        decoded = decoded * 32 + CROCKFORD.index(ch)
    assert decoded == CREATED
    assert ulid(0, "t") != ulid(1, "t")
    assert customerio_event_id({"trigger_id": "t"}) == ulid(0, "t")  # no created_at


def test_klaviyo_create_event() -> None:
    (kl,) = adapters("endpoints: [{type: klaviyo, api_key: '${KL}'}]")
    trigger = offer(3)
    r = kl.request([trigger])
    assert (r.method, r.url) == ("POST", "https://a.klaviyo.com/api/events")
    assert r.headers["authorization"] == "Klaviyo-API-Key pk_abc"
    assert r.headers["revision"] == KLAVIYO_REVISION
    assert r.headers["content-type"] == r.headers["accept"] == "application/vnd.api+json"
    data = r.json()["data"]
    assert data["type"] == "event"
    attrs = data["attributes"]
    assert attrs["metric"] == {
        "data": {"type": "metric", "attributes": {"name": "user.send_offer"}}
    }
    assert attrs["profile"] == {"data": {"type": "profile", "attributes": {"external_id": "u3"}}}
    assert attrs["unique_id"] == trigger["trigger_id"]
    assert datetime.fromisoformat(attrs["time"]) == datetime(2026, 1, 1, tzinfo=UTC)
    assert attrs["properties"]["score"] == 0.91
    (pinned,) = adapters("endpoints: [{type: klaviyo, api_key: k, revision: 2025-01-15}]")
    assert pinned.request([trigger]).headers["revision"] == "2025-01-15"  # a YAML date, too


def test_a_trigger_without_a_user_cannot_be_sent() -> None:
    (braze,) = adapters(BRAZE)
    (kl,) = adapters("endpoints: [{type: klaviyo, api_key: k}]")
    no_user = offer(1)
    no_user["target"] = {"campaign_id": "cmp-1"}
    for adapter in (braze, kl):
        problem = adapter.check(no_user)
        assert problem is not None and "target.user_id is missing" in problem
        with pytest.raises(AdapterError):
            adapter.request([no_user])
    assert braze.check(offer(1)) is None
    unmapped = Adapter("braze", "http://x", "k", campaigns=(("user.send_offer", "c"),))
    assert "no Braze campaign" in str(unmapped.check(offer(1, action="user.send_reminder")))


def test_retry_after_from_vendor_headers() -> None:
    assert retry_after({"Retry-After": "7"}, 0) == "7"
    assert retry_after({"x-ratelimit-retry-after": "12"}, 0) == "12"
    assert retry_after({"X-RateLimit-Reset": "1700000090"}, 1_700_000_000.4) == "90"
    assert retry_after({"X-RateLimit-Reset": "1699999990"}, 1_700_000_000.0) == "0"
    assert retry_after({"X-RateLimit-Reset": "soon"}, 0) is None
    assert retry_after({"Retry-After": "3", "X-RateLimit-Reset": "99"}, 0) == "3"


# --- Braze batching as pure decisions ----------------------------------------------------------


def test_batches_fill_to_fifty_and_the_rest_waits_for_the_linger() -> None:
    b: Batcher[str] = Batcher(size=50, linger_s=1.0)
    sent: list[list[str]] = []
    for n in range(120):
        sent += b.add("braze-offer", f"u{n}", f"t{n}", now=n * 0.001)
    assert [len(x) for x in sent] == [50, 50]
    assert b.next_due() == pytest.approx(1.1)
    assert b.due(1.0) == []
    rest = b.due(1.2)
    assert [len(x) for x in rest] == [20] and b.next_due() is None
    everything = [t for batch in sent + rest for t in batch]
    assert Counter(everything) == Counter(f"t{n}" for n in range(120))  # each exactly once


def test_batches_per_campaign_and_one_user_per_batch() -> None:
    b: Batcher[str] = Batcher(size=50, linger_s=0.5)
    assert b.add("offer", "u1", "a", 0.0) == [] and b.add("reminder", "u1", "b", 0.0) == []
    assert b.add("offer", "u2", "c", 0.1) == []
    assert b.add("offer", "u1", "d", 0.2) == [["a", "c"]]  # u1 again: the batch goes first
    assert sorted(map(sorted, b.due(0.5))) == [["b"]]  # the reminder batch's linger is over
    assert b.due(0.69) == [] and b.due(0.7) == [["d"]]
    b.add("offer", "u9", "e", 1.0)
    assert b.drain() == [["e"]] and b.drain() == []


def test_a_retried_trigger_joins_a_later_batch() -> None:
    """A batch's response is each trigger's own: the ones retried come back later, alone or
    with new triggers, and never twice in one request."""
    b: Batcher[str] = Batcher(size=3, linger_s=1.0)
    first = b.add("c", "u1", "t1", 0) + b.add("c", "u2", "t2", 0) + b.add("c", "u3", "t3", 0)
    assert first == [["t1", "t2", "t3"]]  # answered 503: each of the three schedules a retry
    later = b.add("c", "u4", "t4", 5.0) + b.add("c", "u2", "t2", 5.2)  # t2's retry is due
    assert later == [] and b.due(6.0) == [["t4", "t2"]]


# --- configuration -------------------------------------------------------------------------------


def test_adapter_endpoints_next_to_a_webhook() -> None:
    cfg = parse_config(
        """
endpoints:
  - url: https://engine.example/hooks/pulse
    type: webhook
    actions: ["campaign.*"]
    secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
  - type: braze
    url: https://rest.iad-01.braze.com
    api_key: inline-key
    campaign_id: c1
    batch: 20
    linger: 250ms
  - {type: klaviyo, api_key: "${KL}", actions: [user.send_offer]}
""",
        env=ENV,
    )
    kinds = {a: [e.kind for e in cfg.matching(a)] for a in ("campaign.pause", "user.send_offer")}
    assert kinds == {"campaign.pause": ["webhook"], "user.send_offer": ["braze", "klaviyo"]}
    assert [e.kind for e in cfg.matching("user.send_reminder")] == ["braze"]  # default user.*
    braze = cfg.endpoint("https://rest.iad-01.braze.com")
    assert braze is not None and braze.adapter is not None and braze.secrets == ()
    assert (braze.adapter.api_key, braze.adapter.batch_size, braze.adapter.linger_s) == (
        "inline-key",
        20,
        0.25,
    )
    assert braze.actions == ("user.*",)
    assert cfg.endpoints[0].adapter is None and cfg.endpoints[0].kind == "webhook"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "endpoints: [{type: klaviyo, api_key: k, secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2La}]",
            "a klaviyo endpoint takes no webhook secret",
        ),
        (
            "endpoints: [{type: klaviyo, api_key: k, actions: ['*']}]",
            f"match campaign-level actions {list(CAMPAIGN_ACTIONS)}",
        ),
        (
            "endpoints: [{type: customerio, site_id: s, api_key: k, actions: [campaign.pause]}]",
            "send campaign.* to a generic webhook endpoint (type: webhook)",
        ),
        (
            "endpoints: [{type: klaviyo, api_key: k, actions: [user.send_ofer]}]",
            "match no user-level action",
        ),
        ("endpoints: [{type: klaviyo}]", "api_key is required: write it as api_key: ${"),
        ("endpoints: [{type: customerio, api_key: k}]", "site_id is required"),
        (
            "endpoints: [{type: klaviyo, api_key: '${NOT_SET_ANYWHERE}'}]",
            "refers to ${NOT_SET_ANYWHERE}, which is not set in the environment: "
            "export NOT_SET_ANYWHERE",
        ),
        ("endpoints: [{type: klaviyo, api_key: 'pk_${KL}'}]", "write an environment reference"),
        (
            "endpoints: [{type: braze, api_key: k, campaign_id: c}]",
            "url must be an http:// or https:// URL, e.g. https://rest.iad-01.braze.com",
        ),
        (
            "endpoints: [{type: braze, url: 'https://b.example', api_key: k, "
            "campaigns: {user.send_offer: c}}]",
            "no Braze campaign for ['user.send_reminder']",
        ),
        (
            "endpoints: [{type: braze, url: 'https://b.example', api_key: k, campaign_id: c, "
            "batch: 51}]",
            "batch must be a whole number from 1 to 50",
        ),
        (
            "endpoints: [{type: braze, url: 'https://b.example', api_key: k, campaign_id: c, "
            "linger: soon}]",
            "linger: invalid duration",
        ),
        ("endpoints: [{type: sendgrid, api_key: k}]", "type 'sendgrid' is unknown"),
        (
            "endpoints: [{type: klaviyo, api_key: k, headers: {X-A: b}}]",
            "unknown keys ['headers'] for type: klaviyo",
        ),
        ("endpoints: [{type: customerio, region: ap, api_key: k}]", "region must be us or eu"),
        ("endpoints: [{type: klaviyo, api_key: k, revision: latest}]", "revision must be"),
        (
            "endpoints: [{type: klaviyo, api_key: k, actions: [user.send_offer], "
            "events: {user.send_reminder: x}}]",
            "'user.send_reminder' is not among this endpoint's actions",
        ),
        (
            "endpoints: [{type: klaviyo, api_key: k}, {type: klaviyo, api_key: j}]",
            "https://a.klaviyo.com is listed twice",
        ),
    ],
)
def test_config_errors_say_what_is_wrong_and_what_to_do(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "delivery.yaml", env=ENV)
    assert message in str(err.value) and str(err.value).startswith("delivery.yaml"), err.value


def test_credentials_come_from_the_environment_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PULSE_TEST_KLAVIYO_KEY", "pk_from_env")
    cfg = parse_config("endpoints: [{type: klaviyo, api_key: '${PULSE_TEST_KLAVIYO_KEY}'}]")
    adapter = cfg.endpoints[0].adapter
    assert adapter is not None and adapter.api_key == "pk_from_env"
