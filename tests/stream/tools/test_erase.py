"""Unit tests for the messages of `pulse erase` (the Kafka round trip is in test_privacy)."""

from __future__ import annotations

import pytest

from stream.cli import build_parser
from stream.tools.erase import EraseReceipt, describe


def receipt(ack: dict | None, key: str = "u1") -> EraseReceipt:
    return EraseReceipt(key, "r1", "pulse.erasures", 2, 7, ack, waited_s=0.4)


@pytest.mark.parametrize(
    ("ack", "wait", "code", "words"),
    [
        ({"status": "applied", "clicks": [2], "models": [2]}, 60, 0, ["applied", "[2]"]),
        ({"status": "applied", "clicks": [], "models": []}, 60, 0, ["none held"]),
        ({"status": "salt_mismatch"}, 60, 2, ["PULSE_PSEUDONYMIZE_SALT", "nothing was erased"]),
        (None, 60, 3, ["no worker acknowledged", "PULSE_APP_ID", "--wait"]),
        (None, 0, 0, ["not waiting"]),
    ],
)
def test_describe(ack: dict | None, wait: float, code: int, words: list[str]) -> None:
    got, message = describe("u1", receipt(ack), wait)
    assert got == code
    assert "pulse.erasures partition 2 offset 7" in message
    for word in words:
        assert word in message


def test_describe_names_the_pseudonym() -> None:
    _, message = describe("alice", receipt({"status": "applied"}, key="abc123"), 60)
    assert "user 'alice' (pseudonym abc123)" in message


def test_erase_parser() -> None:
    args = build_parser().parse_args(["erase", "--user", "u-9", "--wait", "5"])
    assert (args.user, args.wait, args.func.__name__) == ("u-9", 5.0, "cmd_erase")
