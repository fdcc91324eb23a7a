"""Sealed state records: the tag is checked before a byte of the payload is used."""

from __future__ import annotations

import pytest

from stream.core.sealing import MAGIC, StateAuthError, StateKey


def test_round_trip_and_wrong_keys() -> None:
    key = StateKey("s3cret", "app")
    sealed = key.seal(b"\x80\x05payload")
    assert sealed.startswith(MAGIC) and key.open(sealed, "here") == b"\x80\x05payload"
    for other in (StateKey("other", "app"), StateKey("", "app")):
        with pytest.raises(StateAuthError, match=r"^here: .*does not authenticate"):
            other.open(sealed, "here")


def test_tampering_and_truncation_are_caught() -> None:
    key = StateKey("", "app")
    sealed = key.seal(b"abcdef")
    tampered = sealed[:-1] + b"g"
    for bad in (tampered, sealed[:10], MAGIC):
        with pytest.raises(StateAuthError):
            key.open(bad, "x")


def test_the_app_id_key_differs_per_app() -> None:
    with pytest.raises(StateAuthError, match="the key of this app id"):
        StateKey("", "app-b").open(StateKey("", "app-a").seal(b"p"), "x")


def test_unsealed_records_only_without_a_configured_key() -> None:
    assert StateKey("", "app").open(b"\x80\x05legacy", "x") == b"\x80\x05legacy"
    with pytest.raises(StateAuthError, match="not sealed"):
        StateKey("k", "app").open(b"\x80\x05legacy", "x")
