"""Parse human durations (``30``, ``30s``, ``5m``, ``24h``, ``250ms``) into seconds.

>>> parse_duration("30")
30.0
>>> parse_duration("5m")
300.0
>>> parse_duration("24h")
86400.0
>>> parse_duration("250ms")
0.25
"""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(text: str | float | int) -> float:
    """Return the duration in seconds; raise ValueError with a usable message."""
    if isinstance(text, int | float):
        return float(text)
    match = _PATTERN.match(text)
    if not match:
        raise ValueError(
            f"invalid duration {text!r}: use plain seconds or a number with a unit "
            "suffix ms, s, m, h or d (e.g. 30, 30s, 5m, 24h)"
        )
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]
