"""Unit tests for stream.core.privacy and the erase methods of the pipeline and model."""

from __future__ import annotations

import hmac
import ipaddress
import pickle
import timeit
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.core import plainstate
from stream.core.dedup import Deduplicator
from stream.core.ingest import Ingestor
from stream.core.pipeline import PartitionStage
from stream.core.privacy import (
    PSEUDONYM_HEX,
    Pseudonymizer,
    erase_request,
    protect,
    pseudonymize,
    read_erase_record,
    salt_check,
    truncate_ip,
)
from stream.core.propensity import PropensityModel
from stream.core.validation import check_event
from stream.core.windows import PartitionWindows

T0 = 1_714_564_800_000


def reference(value: str, salt: bytes) -> str:
    return hmac.new(salt, value.encode(), "sha256").hexdigest()[:PSEUDONYM_HEX]


# --- pseudonyms ------------------------------------------------------------------------------


@pytest.mark.parametrize("salt", [b"s", b"x" * 64, b"y" * 65, b"long " * 40, "sél".encode()])
@pytest.mark.parametrize("value", ["u-42", "", "ünïcode-ÿ", "x" * 128])
def test_pseudonym_is_hmac_sha256_truncated(salt: bytes, value: str) -> None:
    expected = reference(value, salt)
    assert Pseudonymizer(salt)(value) == expected
    assert pseudonymize(value, salt) == expected
    assert len(expected) == PSEUDONYM_HEX


def test_pseudonyms_depend_on_salt_and_id() -> None:
    a, b = Pseudonymizer("one"), Pseudonymizer("two")
    assert a("u1") != b("u1") and a("u1") != a("u2") and a("u1") == a("u1")


def test_empty_salt_is_refused_with_a_hint() -> None:
    with pytest.raises(ValueError, match="PULSE_PSEUDONYMIZE_SALT"):
        Pseudonymizer("")


@given(st.text(max_size=200), st.binary(min_size=1, max_size=100))
def test_pseudonymizer_matches_hmac_for_any_input(value: str, salt: bytes) -> None:
    try:
        value.encode()
    except UnicodeEncodeError:  # lone surrogates: never in parsed JSON
        return
    assert Pseudonymizer(salt)(value) == reference(value, salt)


def test_pseudonymisation_costs_a_few_microseconds() -> None:
    p = Pseudonymizer("salt")
    event = {"user_id": "user-123456", "anonymous_id": "anon-abcdef", "context": {"ip": "1.2.3.4"}}
    n = 2000
    per_call = min(timeit.repeat(lambda: p("user-123456"), number=n, repeat=5)) / n
    per_event = min(timeit.repeat(lambda: protect(dict(event), p), number=n, repeat=5)) / n
    assert per_call < 10e-6, f"{per_call * 1e6:.2f} µs per pseudonym"
    assert per_event < 20e-6, f"{per_event * 1e6:.2f} µs per event"


# --- IP truncation ---------------------------------------------------------------------------

IP_CASES: dict[str, tuple[str, str | None]] = {
    "ipv4": ("203.0.113.77", "203.0.113.0"),
    "ipv4 already truncated": ("203.0.113.0", "203.0.113.0"),
    "ipv4 leading zeros": ("010.001.002.003", None),
    "ipv4 spaces": (" 1.2.3.4", None),
    "ipv4 nul": ("1.2.3.4\0", None),
    "ipv4 hex": ("0x1.2.3.4", None),
    "ipv4 octet over 255": ("1.2.3.256", None),
    "ipv4 too few parts": ("1.2.3", None),
    "ipv4 empty part": ("1..3.4", None),
    "ipv4 sign": ("1.2.3.+4", None),
    "ipv4 unicode digits": ("1.2.3.٤", None),
    "ipv6": ("2001:db8:abcd:12:1:2:3:4", "2001:db8:abcd::"),
    "ipv6 compressed": ("2001:db8::1", "2001:db8::"),
    "ipv6 loopback": ("::1", "::"),
    "ipv6 zone id": ("fe80::1%eth0", "fe80::"),
    "ipv4-mapped ipv6": ("::ffff:198.51.100.7", "198.51.100.0"),
    "ipv6 garbage": ("2001:db8::g", None),
    "hostname": ("example.com", None),
    "empty": ("", None),
    "very long": ("1" * 100, None),
    "ipv6 upper case": ("2001:DB8:ABCD:1::1", "2001:db8:abcd::"),
    "ipv6 two gaps": ("1::2::3", None),
}


@pytest.mark.parametrize(("ip", "expected"), list(IP_CASES.values()), ids=list(IP_CASES))
def test_truncate_ip(ip: str, expected: str | None) -> None:
    assert truncate_ip(ip) == expected


@given(st.ip_addresses(v=4))
def test_ipv4_is_its_24_network(addr: ipaddress.IPv4Address) -> None:
    net = ipaddress.ip_network(f"{addr}/24", strict=False)
    assert truncate_ip(str(addr)) == str(net.network_address)


@given(st.ip_addresses(v=6))
def test_ipv6_is_its_48_network_and_idempotent(addr: ipaddress.IPv6Address) -> None:
    short = truncate_ip(str(addr))
    assert short is not None and truncate_ip(short) == short
    if addr.ipv4_mapped is None:
        assert short == str(ipaddress.ip_network(f"{addr}/48", strict=False).network_address)


@given(st.text(max_size=80))
def test_truncate_ip_never_raises_and_is_idempotent(text: str) -> None:
    short = truncate_ip(text)
    assert short is None or truncate_ip(short) == short


def test_protect_copies_context_and_drops_non_ips() -> None:
    original = {"user_id": "u", "context": {"ip": "1.2.3.4", "locale": "de"}}
    event = dict(original)
    protect(event, Pseudonymizer("s"))
    assert event["context"] == {"ip": "1.2.3.0", "locale": "de"}
    assert original["context"]["ip"] == "1.2.3.4"  # the caller's object is untouched
    assert event["user_id"] == pseudonymize("u", "s")
    odd = {"context": {"ip": "not-an-ip"}}
    protect(odd, None)
    assert odd == {"context": {}}


# --- applied at validation and ingest --------------------------------------------------------


def event(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": "e1",
        "type": "click",
        "event_time": T0,
        "user_id": "alice",
        "anonymous_id": "device-1",
        "campaign_id": "c1",
        "context": {"ip": "192.0.2.99", "user_agent": "ua"},
    }
    base.update(changes)
    return base


def test_check_event_pseudonymises_and_truncates() -> None:
    p = Pseudonymizer("salt")
    original = event()
    out = check_event(original, T0, p)
    assert isinstance(out, dict)
    assert out["user_id"] == pseudonymize("alice", "salt")
    assert out["anonymous_id"] == pseudonymize("device-1", "salt")
    assert out["context"] == {"ip": "192.0.2.0", "user_agent": "ua"}
    assert original == event()  # the input is not modified


def test_without_salt_ids_stay_and_ip_is_still_truncated() -> None:
    out = check_event(event(), T0)
    assert isinstance(out, dict)
    assert (out["user_id"], out["context"]["ip"]) == ("alice", "192.0.2.0")


def test_ingestor_with_salt_emits_no_raw_id() -> None:
    ing = Ingestor(Deduplicator(86_400_000), salt="salt")
    result = ing.process([(b"alice", orjson.dumps(event()), 0, 0, T0)])
    assert len(result.valid) == 1
    assert b"alice" not in orjson.dumps(result.valid[0])
    assert b"192.0.2.99" not in orjson.dumps(result.valid[0])


# --- erase requests --------------------------------------------------------------------------


def test_erase_request_round_trip_and_salt_check() -> None:
    key, value = erase_request("alice", "salt", "pulse", "r1", 7)
    assert key == pseudonymize("alice", "salt")
    unsalted, _ = erase_request("alice", "", "pulse", "r1", 7)
    assert "alice" not in unsalted and unsalted != erase_request("alice", "", "other", "r", 7)[0]
    assert read_erase_record(key.encode(), value) == (
        key,
        {"request_id": "r1", "requested_at": 7, "salt_check": salt_check("salt")},
    )
    assert salt_check("salt") != salt_check("other") and salt_check("") == ""
    assert b"alice" not in value


@pytest.mark.parametrize(
    ("key", "value"),
    [(None, b"{}"), (b"u", None), (b"u", b"{"), (b"\xff", b'{"request_id": "r"}'), (b"u", b"{}")],
)
def test_unreadable_erase_records_are_none(key: bytes | None, value: bytes | None) -> None:
    assert read_erase_record(key, value) is None


# --- erase_user ------------------------------------------------------------------------------


def click(user: str, ts: int, consent: bool = True) -> dict[str, Any]:
    return {
        "type": "click",
        "ts": ts,
        "user_id": user,
        "campaign_id": "c1",
        "channel": "web",
        "consent": {"marketing": consent},
    }


def test_model_erase_user_leaves_no_trace_in_memory_or_the_checkpoint() -> None:
    m = PropensityModel(attribution_ms=60_000, min_labels=0, min_score=0.0)
    for i, user in enumerate(["ghost-user", "other-user"] * 3):
        m.on_event(click(user, i * 1000))
        m.on_event({"type": "view", "ts": i * 1000 + 1, "user_id": user, "campaign_id": "c1",
                    "channel": "web"})  # fmt: skip
    m.on_event({"type": "purchase", "ts": 9000, "user_id": "other-user", "revenue": 5.0,
                "channel": "web"})  # fmt: skip
    device = PropensityModel(attribution_ms=60_000)
    device.on_event(click("ghost-user", 9500))
    m.merge_user("other-user", "ghost-user", device.take_user("ghost-user") or {})  # a login
    assert "ghost-user" in m.merged_from and not device.users
    assert b"ghost-user" in pickle.dumps(m)
    assert m.erase_user("ghost-user") is True
    assert b"ghost-user" not in pickle.dumps(m)  # any new per-user state must be erased too
    assert b"ghost-user" not in plainstate.dumps(m.to_state())
    assert m.erase_user("ghost-user") is False
    assert b"other-user" in pickle.dumps(m)
    m.on_event(click("other-user", 10_000))  # still works after an erase


def test_stage_erase_user_drops_clicks_and_model_state() -> None:
    stage = PartitionStage(
        Ingestor(Deduplicator(86_400_000)),
        lambda: PartitionWindows(60_000, 5_000, 3_600_000),
        lambda: PropensityModel(attribution_ms=3_600_000),
    )
    records = [
        (b"k", orjson.dumps(event(event_id=f"e{i}", user_id=u, event_time=T0 + i, item_id=it)),
         p, i, T0)
        for i, (u, p, it) in enumerate(
            [("alice", 1, "sku-1"), ("alice", 1, "sku-2"), ("bob", 1, "sku-1"), ("carol", 2, "x")]
        )
    ]  # fmt: skip
    stage.process(records, T0)
    stage.window_state(1).drain_clicks()
    reco = stage.recommenders[1]
    assert "sku-2" in reco.co["sku-1"]
    assert stage.erase_user("alice") == {"clicks": [1], "models": [1], "recommenders": [1]}
    assert "alice" not in reco.users and "sku-2" not in reco.co.get("sku-1", {})
    assert b"alice" not in plainstate.dumps(reco.to_state())
    assert reco.recommend("alice", 5)[1] == "popular" and "bob" in reco.users
    assert "alice" not in stage.window_state(1).last_click
    assert "alice" not in stage.window_state(1).dirty_clicks
    assert b"alice" not in pickle.dumps(stage.models[1])
    assert b"alice" not in plainstate.dumps(stage.models[1].to_state())
    assert "bob" in stage.window_state(1).last_click
    assert stage.erase_user("alice") == {"clicks": [], "models": [], "recommenders": []}
    purchase = event(event_id="p1", type="purchase", user_id="alice", event_time=T0 + 10,
                     revenue=5.0, currency="EUR")  # fmt: skip
    del purchase["campaign_id"]
    out = stage.process([(b"k", orjson.dumps(purchase), 1, 10, T0)], T0)
    assert out.counted == [] and stage.window_state(1).unattributed == 1
