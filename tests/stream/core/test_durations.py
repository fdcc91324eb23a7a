"""Unit tests for stream.core.durations.parse_duration."""

from __future__ import annotations

import pytest

from stream.core.durations import parse_duration

VALID: list[tuple[str | float, float]] = [
    ("30", 30.0),
    ("0", 0.0),
    ("30s", 30.0),
    ("0s", 0.0),
    ("5m", 300.0),
    ("24h", 86_400.0),
    ("2d", 172_800.0),
    ("250ms", 0.25),
    ("1ms", 0.001),
    ("1.5h", 5_400.0),
    ("0.5", 0.5),
    ("2.5s", 2.5),
    ("007", 7.0),
    (" 30s ", 30.0),
    ("30 s", 30.0),
    ("10 ms", 0.01),
    ("\t5m\n", 300.0),
    (30, 30.0),
    (0, 0.0),
    (2.5, 2.5),
]


@pytest.mark.parametrize(("text", "seconds"), VALID, ids=[repr(t) for t, _ in VALID])
def test_valid_durations(text: str | float, seconds: float) -> None:
    result = parse_duration(text)
    assert isinstance(result, float)
    assert result == pytest.approx(seconds)


INVALID = [
    "",
    "   ",
    "s",
    "abc",
    "5x",
    "5sec",
    "5 minutes",
    "5M",
    "5H",
    "5S",
    "-5s",
    "+5s",
    "1e3",
    ".5s",
    "5.s",
    "1,5s",
    "5m30s",
    "5 m s",
    "ms5",
    "inf",
    "nan",
]


@pytest.mark.parametrize("text", INVALID, ids=[repr(t) for t in INVALID])
def test_invalid_durations_have_a_helpful_message(text: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        parse_duration(text)
    message = str(excinfo.value)
    assert message.startswith(f"invalid duration {text!r}: ")
    assert "plain seconds or a number with a unit suffix ms, s, m, h or d" in message
    assert "(e.g. 30, 30s, 5m, 24h)" in message
