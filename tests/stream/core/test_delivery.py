"""Webhook delivery logic without a broker: config, globs, signing (checked with the
``standardwebhooks`` library), outcome classes, the retry schedule, DLQ records."""

from __future__ import annotations

import base64
import random
import time
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from stream.core.delivery import (
    DEFAULT_SCHEDULE,
    DeliveryConfig,
    action_label,
    classify,
    decide,
    dlq_record,
    latency_s,
    load_config,
    matches_glob,
    parse_config,
    parse_retry_after,
    parse_schedule,
    read_retry_record,
    retry_delay,
    retry_record,
    sign_headers,
)
from stream.core.errors import ConfigError

OLD = "whsec_" + base64.b64encode(b"old-secret-0123456789abcdef").decode()
NEW = "whsec_" + base64.b64encode(b"new-secret-0123456789abcdef").decode()
YAML = f"""
endpoints:
  - url: https://engine.example/hooks/pulse
    actions: ["campaign.*"]
    secret: {NEW}
    headers: {{X-Team: growth}}
  - url: http://127.0.0.1:9/offers
    actions: ["user.send_offer", "campaign.pause"]
    secrets: [{NEW}, {OLD}]
"""


def test_matching_by_glob() -> None:
    cfg = parse_config(YAML)
    urls = {a: [e.url for e in cfg.matching(a)] for a in ("campaign.pause", "user.send_offer")}
    assert urls == {
        "campaign.pause": ["https://engine.example/hooks/pulse", "http://127.0.0.1:9/offers"],
        "user.send_offer": ["http://127.0.0.1:9/offers"],
    }
    assert cfg.matching("user.send_reminder") == []
    assert cfg.schedule == DEFAULT_SCHEDULE and cfg.max_attempts == 7
    assert cfg.endpoint("http://127.0.0.1:9/offers") is cfg.endpoints[1]
    assert cfg.endpoint("http://elsewhere") is None


def test_schedule_from_yaml_and_env() -> None:
    assert parse_config(YAML + "schedule: [1s, 2m]\n").schedule == (1.0, 120.0)
    assert parse_config(YAML + "schedule: [1s]\n", schedule="0.5s, 3").schedule == (0.5, 3.0)
    assert parse_config(YAML, schedule="").schedule == DEFAULT_SCHEDULE
    assert parse_schedule("") == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n", "expected a mapping with an `endpoints:` list"),
        ("endpoints: [\n", "not valid YAML"),
        ("endpoints: []\nretries: 3\n", "unknown keys ['retries']"),
        ("endpoints: [{url: ftp://x, actions: ['*'], secret: S}]", "url must be an http"),
        (f"endpoints: [{{url: 'http://x', secret: {NEW}}}]", "actions must be a list of globs"),
        ("endpoints: [{url: 'http://x', actions: ['*']}]", "a secret is required"),
        ("endpoints: [{url: 'http://x', actions: ['*'], secret: plain}]", "whsec_<base64 key>"),
        (
            f"endpoints: [{{url: 'http://x', actions: ['*'], secret: {NEW}, "
            "headers: {webhook-id: x}}]",
            "headers may not set ['webhook-id']",
        ),
        (
            f"endpoints: [{{url: 'http://x', actions: ['*'], secret: {NEW}}}, "
            f"{{url: 'http://x', actions: ['a'], secret: {NEW}}}]",
            "listed twice",
        ),
        (f"endpoints: [{{url: 'http://x', actions: ['*'], secret: {NEW}, tls: no}}]", "['tls']"),
        ("endpoints: []\nschedule: [5s, soon]\n", "invalid duration 'soon'"),
        ("endpoints: []\nconcurrency: 0\n", "concurrency must be a whole number"),
    ],
)
def test_config_errors_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "delivery.yaml")
    assert message in str(err.value) and str(err.value).startswith("delivery.yaml")


def test_load_config_names_the_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="PULSE_DELIVERY is not set"):
        load_config("")
    with pytest.raises(ConfigError, match="cannot read it"):
        load_config(str(tmp_path / "missing.yaml"))
    path = tmp_path / "d.yaml"
    path.write_text(YAML)
    assert len(load_config(str(path), "1s").endpoints) == 2


def test_signature_verifies_with_the_standardwebhooks_library() -> None:
    cfg = parse_config(YAML)
    body = b'{"trigger_id":"ctr_drop:c1:1","action":"campaign.pause","created_at":1}'
    headers = sign_headers(cfg.endpoints[0], "ctr_drop:c1:1", body, time.time())
    assert headers["webhook-id"] == "ctr_drop:c1:1" and headers["X-Team"] == "growth"
    assert headers["content-type"] == "application/json"
    assert Webhook(NEW).verify(body, headers)["action"] == "campaign.pause"
    with pytest.raises(WebhookVerificationError):
        Webhook(OLD).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(NEW).verify(body + b" ", headers)


def test_rotation_signs_with_every_secret() -> None:
    endpoint = parse_config(YAML).endpoints[1]
    body = b"{}"
    headers = sign_headers(endpoint, "t1", body, time.time())
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (NEW, OLD):  # receivers on either secret accept it
        Webhook(secret).verify(body, headers)


def test_signature_matches_the_spec_by_hand() -> None:
    import hashlib
    import hmac

    endpoint = parse_config(YAML).endpoints[0]
    headers = sign_headers(endpoint, "msg_1", b"{}", 1_700_000_000.9)
    key = base64.b64decode(NEW.removeprefix("whsec_"))
    mac = hmac.new(key, b"msg_1.1700000000.{}", hashlib.sha256).digest()
    assert headers["webhook-timestamp"] == "1700000000"
    assert headers["webhook-signature"] == "v1," + base64.b64encode(mac).decode()


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "delivered"), (201, "delivered"), (204, "delivered"),
        (408, "retry"), (429, "retry"), (500, "retry"), (502, "retry"), (503, "retry"),
        (None, "retry"),
        (400, "final"), (401, "final"), (404, "final"), (410, "final"), (413, "final"),
        (301, "final"),
    ],
)  # fmt: skip
def test_classify(status: int | None, outcome: str) -> None:
    assert classify(status) == outcome


def test_retry_after_forms() -> None:
    now = 1_700_000_000.0
    date = format_datetime(datetime.fromtimestamp(now + 90, tz=UTC), usegmt=True)
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(date, now) == pytest.approx(90.0)
    assert parse_retry_after("-5", now) == 0.0
    assert parse_retry_after(None, now) is None and parse_retry_after("later", now) is None


def test_retry_delay_grows_with_jitter_between_steps() -> None:
    rng = random.Random(7)
    schedule = DEFAULT_SCHEDULE
    for attempt in range(1, len(schedule) + 1):
        low = schedule[attempt - 2] if attempt >= 2 else 0.0
        waits = [retry_delay(attempt, schedule, rng) for _ in range(300)]
        assert all(low <= w <= schedule[attempt - 1] for w in waits)
        assert max(waits) - min(waits) > (schedule[attempt - 1] - low) * 0.8  # spread out
    with pytest.raises(ValueError):
        retry_delay(len(schedule) + 1, schedule, rng)


def test_retry_after_is_honoured_up_to_the_longest_step() -> None:
    rng = random.Random(1)
    assert retry_delay(1, (5.0, 60.0), rng, retry_after_s=30.0) == 30.0
    assert retry_delay(1, (5.0, 60.0), rng, retry_after_s=3600.0) == 60.0
    assert retry_delay(1, (5.0, 60.0), rng, retry_after_s=0.0) <= 5.0  # shorter: schedule wins


def test_decide_walks_the_schedule_then_dead_letters() -> None:
    cfg = DeliveryConfig(endpoints=(), schedule=(1.0, 2.0, 4.0))
    rng = random.Random(3)
    now = 10_000
    for attempt in (1, 2, 3):
        d = decide(503, "", attempt, cfg, now, rng)
        assert d.kind == "retry" and now <= d.due_ms <= now + 4000
    assert decide(None, "timeout", 4, cfg, now, rng).reason == "exhausted"
    assert decide(410, "", 1, cfg, now, rng).reason == "gone"
    assert decide(403, "", 1, cfg, now, rng).reason == "rejected"
    assert decide(204, "", 4, cfg, now, rng).kind == "delivered"
    d = decide(429, "", 1, cfg, now, rng, retry_after="3")
    assert d.due_ms == now + 3000
    assert decide(503, "", 1, DeliveryConfig(endpoints=()), now, rng).kind == "retry"
    assert decide(503, "", 1, DeliveryConfig(endpoints=(), schedule=()), now, rng).kind == (
        "dead_letter"
    )


def test_records() -> None:
    trigger = {"trigger_id": "t1", "action": "campaign.pause", "created_at": 1000}
    rec = retry_record(trigger, "http://x", 2, 5000, 503)
    assert read_retry_record(rec) == rec
    assert read_retry_record({"trigger": trigger}) is None
    assert read_retry_record([1]) is None
    dead = dlq_record(trigger, "http://x", "exhausted", 7, "network: ConnectError", 9000)
    assert set(dead) == {"trigger", "endpoint", "reason", "attempts", "last_status", "failed_at"}


def test_latency_and_labels() -> None:
    assert latency_s({"created_at": 1000}, 3500) == 2.5
    assert latency_s({"created_at": "soon"}, 3500) is None
    assert latency_s({"created_at": 9000}, 3500) == 0.0
    assert action_label("user.send_offer") == "user.send_offer"
    assert action_label("u-17's action") == "other" and action_label(None) == "other"
    assert matches_glob({"action": "user.send_offer"}, "user.*")
    assert not matches_glob({"action": "campaign.pause"}, "user.*")
    assert matches_glob({}, None)
