"""Exchange rates into the reporting currency, in force from a time on (``pulse.fx``).

A rate is units of the reporting currency (``PULSE_CURRENCY``) per unit of a
currency, valid from ``valid_from`` (epoch ms) until the next rate of that
currency. A purchase is converted with the rate in force at its event time, so
a replay converts as the live run did; a currency with no rate in force then is
*unconverted*: never summed raw.

>>> fx = FxRates("USD")
>>> fx.set("EUR", 1.08, valid_from=1_000)
>>> fx.set("EUR", 1.10, valid_from=5_000)
>>> fx.rate("EUR", 999), fx.rate("EUR", 1_000), fx.rate("EUR", 7_000), fx.rate("USD", 0)
(None, 1.08, 1.1, 1.0)
>>> fx.convert(10.0, "eur", 6_000)
11.0
>>> record_key("EUR", 1_767_225_600_000)
'EUR@2026-01-01T00:00:00Z'
"""

from __future__ import annotations

import bisect
import csv
import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from stream.core.errors import PulseError

__all__ = ["FxError", "FxRates", "parse_time", "read_csv", "record", "record_key"]

_CODE = re.compile(r"^[A-Z]{3}$")


class FxError(PulseError, ValueError):
    """A rate, currency or time that cannot be used; the message says what to fix."""


def currency_code(value: Any) -> str:
    """An ISO 4217 code, upper-cased (events may send lower case).

    >>> currency_code("eur")
    'EUR'
    """
    code = str(value).strip().upper()
    if not _CODE.match(code):
        raise FxError(f"currency {value!r} is not an ISO 4217 code: use three letters, e.g. EUR")
    return code


def parse_time(value: Any) -> int:
    """Epoch ms from epoch ms or an ISO 8601 time (``Z`` or an offset; a date is midnight UTC).

    >>> parse_time("2026-01-01"), parse_time("2026-01-01T01:00:00+01:00"), parse_time(5)
    (1767225600000, 1767225600000, 5)
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FxError(
            f"time {value!r} is neither epoch milliseconds nor ISO 8601: use e.g. "
            "2026-01-01T00:00:00Z"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rate(value: Any) -> float:
    try:
        rate = float(value)
    except (TypeError, ValueError):
        rate = math.nan
    if not math.isfinite(rate) or rate <= 0:
        raise FxError(f"rate {value!r} is not a positive number: give e.g. 1.0841")
    return rate


def record_key(currency: str, valid_from: int) -> str:
    """The compaction key of a rate: one record per currency and start time."""
    return f"{currency}@{_iso(valid_from)}"


def record(currency: str, rate: float, valid_from: int) -> tuple[bytes, bytes]:
    """Key and value of a ``pulse.fx`` record.

    >>> record("eur", 1.0841, 0)
    (b'EUR@1970-01-01T00:00:00Z', b'{"currency":"EUR","rate":1.0841,"valid_from":0}')
    """
    code = currency_code(currency)
    value = {"currency": code, "rate": _rate(rate), "valid_from": int(valid_from)}
    return record_key(code, valid_from).encode(), orjson.dumps(value)


class FxRates:
    """Rates per currency, each a time-ordered list of ``(valid_from, rate)``."""

    def __init__(self, reporting: str = "USD") -> None:
        self.reporting = currency_code(reporting)
        self._starts: dict[str, list[int]] = {}
        self._rates: dict[str, list[float]] = {}

    def set(self, currency: str, rate: float, valid_from: int) -> None:
        """Add (or replace) the rate of ``currency`` from ``valid_from`` on."""
        code, value = currency_code(currency), _rate(rate)
        starts = self._starts.setdefault(code, [])
        rates = self._rates.setdefault(code, [])
        i = bisect.bisect_left(starts, valid_from)
        if i < len(starts) and starts[i] == valid_from:
            rates[i] = value
        else:
            starts.insert(i, valid_from)
            rates.insert(i, value)

    def remove(self, currency: str, valid_from: int) -> None:
        """Forget one rate (a tombstone on ``pulse.fx``)."""
        starts = self._starts.get(currency, [])
        i = bisect.bisect_left(starts, valid_from)
        if i < len(starts) and starts[i] == valid_from:
            del starts[i]
            del self._rates[currency][i]

    def rate(self, currency: str, ts: int) -> float | None:
        """The rate in force at ``ts``; 1.0 for the reporting currency; None when none is."""
        if currency == self.reporting:
            return 1.0
        starts = self._starts.get(currency)
        if not starts:
            return None
        i = bisect.bisect_right(starts, ts) - 1
        return self._rates[currency][i] if i >= 0 else None

    def convert(self, amount: float, currency: str, ts: int) -> float | None:
        """``amount`` of ``currency`` at ``ts`` in the reporting currency; None without a rate."""
        rate = self.rate(currency.upper(), ts)
        return None if rate is None else amount * rate

    def apply(self, key: bytes | None, value: bytes | None) -> str | None:
        """Apply one ``pulse.fx`` record; the reason it was refused, or None.

        >>> fx = FxRates("USD")
        >>> fx.apply(*record("EUR", 1.1, 0)), fx.rate("EUR", 1)
        (None, 1.1)
        >>> fx.apply(b"EUR@1970-01-01T00:00:00Z", None), fx.rate("EUR", 1)
        (None, None)
        >>> fx.apply(b"x", b'{"currency": "EUR", "rate": -1, "valid_from": 0}')
        'rate -1 is not a positive number: give e.g. 1.0841'
        """
        if value is None:  # a tombstone: the key names currency and start
            if key is None or b"@" not in key:
                return "a tombstone without a CUR@TIME key"
            code, _, when = key.decode(errors="replace").partition("@")
            try:
                self.remove(currency_code(code), parse_time(when))
            except FxError as exc:
                return str(exc)
            return None
        try:
            data = orjson.loads(value)
            if not isinstance(data, dict):
                raise FxError("the value is not a JSON object")
            self.set(data["currency"], data["rate"], parse_time(data["valid_from"]))
        except (orjson.JSONDecodeError, KeyError) as exc:
            return (
                f"not a rate record ({type(exc).__name__}: {exc}): write "
                '{"currency", "rate", "valid_from"} with `pulse fx set`'
            )
        except FxError as exc:
            return str(exc)
        return None


def read_csv(path: str | Path, reporting: str) -> FxRates:
    """Rates from a CSV with a ``currency,rate,valid_from`` header (``pulse backtest --fx``)."""
    fx = FxRates(reporting)
    with open(path, newline="", encoding="utf-8") as f:
        rows: Iterable[dict[str, str]] = csv.DictReader(f)
        for n, row in enumerate(rows, start=2):
            try:
                fx.set(row["currency"], float(row["rate"]), parse_time(row["valid_from"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise FxError(
                    f"{path} line {n}: {exc}; each row needs currency, rate and valid_from "
                    "(e.g. EUR,1.0841,2026-01-01T00:00:00Z)"
                ) from None
    return fx


#: event time between two missing-rate alerts of one campaign
ALERT_COOLDOWN_MS = 3_600_000


def missing_rate_alert(
    campaign_id: str,
    window_start: int,
    window_end: int,
    unconverted: dict[str, int],
    amounts: dict[str, float],
    reporting: str,
    now_ms: int,
) -> dict[str, Any]:
    """The ``campaign.alert`` trigger for purchases a window could not convert.

    >>> t = missing_rate_alert("c1", 0, 60_000, {"EUR": 2}, {"EUR": 30.5}, "USD", 60_000)
    >>> t["action"], t["rule"], t["evidence"]["unconverted"]
    ('campaign.alert', 'fx_missing', {'EUR': 2})
    >>> print(t["reason"])  # doctest: +NORMALIZE_WHITESPACE
    2 purchases of c1 in the window starting 1970-01-01 00:00:00 UTC (EUR 30.50) had no
    EUR rate into USD and are not in its revenue: set one with
    `pulse fx set EUR RATE --at TIME`.
    """
    from stream.core.triggers import _clock, trigger_id  # as every rule's triggers

    target = {"campaign_id": campaign_id}
    n = sum(unconverted.values())
    money = ", ".join(f"{c} {amounts.get(c, 0.0):.2f}" for c in sorted(unconverted))
    codes = "/".join(sorted(unconverted))
    example = sorted(unconverted)[0]
    return {
        "trigger_id": trigger_id("fx_missing", target, window_start),
        "action": "campaign.alert",
        "rule": "fx_missing",
        "target": target,
        "reason": (
            f"{n} purchase{'s' if n != 1 else ''} of {campaign_id} in the window starting "
            f"{_clock(window_start)} ({money}) had no {codes} rate into {reporting} and "
            f"{'is' if n == 1 else 'are'} not in its revenue: set one with "
            f"`pulse fx set {example} RATE --at TIME`."
        ),
        "evidence": {
            "window_start": window_start,
            "window_end": window_end,
            "unconverted": dict(sorted(unconverted.items())),
            "amounts": {c: round(amounts.get(c, 0.0), 6) for c in sorted(unconverted)},
            "currency": reporting,
        },
        "params": {},
        "created_at": now_ms,
    }
