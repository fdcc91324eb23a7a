"""Turn a batch of raw Kafka records into valid events, DLQ records and counts.

Pure: the Faust agent feeds it ``(key, value, partition, offset, timestamp_ms)``
tuples and sends what it returns.

>>> from stream.core.dedup import Deduplicator
>>> ing = Ingestor(Deduplicator(ttl_ms=86_400_000))
>>> ok = b'{"event_id":"e1","type":"view","event_time":1000,"user_id":"u","campaign_id":"c"}'
>>> r = ing.process([(b"u", ok, 0, 0, 5000), (b"u", ok, 0, 1, 5000), (b"u", b"{", 0, 2, 5000)])
>>> len(r.valid), r.duplicates, dict(r.invalid)
(1, 1, {'invalid_json': 1})
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from stream.core.dedup import DedupIndex
from stream.core.privacy import Pseudonymizer
from stream.core.stageclock import StageClock
from stream.core.validation import MAX_EVENT_BYTES, Rejection, parse_event

RawRecord = tuple[bytes | None, bytes | None, int, int, int]  # key, value, partition, offset, ts_ms


@dataclass(slots=True)
class BatchResult:
    valid: list[dict[str, Any]] = field(default_factory=list)
    #: per valid event: partition, offset, and the record's key and text (for a late DLQ record)
    sources: list[tuple[int, int, bytes | None, bytes]] = field(default_factory=list)
    dlq: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    invalid: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0


def dlq_record(reason: str, detail: str, payload: bytes, received_ms: int) -> bytes:
    """Encode a DLQ record; payload is the original text (truncated when too large).

    >>> orjson.loads(dlq_record("invalid_json", "bad", b"{x", 7))["payload"]
    '{x'
    """
    if len(payload) > MAX_EVENT_BYTES:
        detail = f"{detail} (payload truncated to its first {MAX_EVENT_BYTES} bytes)"
        payload = payload[:MAX_EVENT_BYTES]
    return orjson.dumps(
        {
            "reason": reason,
            "detail": detail,
            "payload": payload.decode("utf-8", errors="replace"),
            "received_at": received_ms,
        }
    )


class Ingestor:
    """Validate, normalise and deduplicate records in arrival order.

    With a ``salt`` (``PULSE_PSEUDONYMIZE_SALT``) valid events carry pseudonymous
    ``user_id`` / ``anonymous_id``; ``context.ip`` is always truncated. ``clock``
    takes the CPU time of parsing and of dedup.
    """

    def __init__(self, dedup: DedupIndex, salt: str = "", clock: StageClock | None = None) -> None:
        self.dedup = dedup
        self.pseudonymizer = Pseudonymizer(salt) if salt else None
        self.clock = clock or StageClock()

    def process(self, records: Iterable[RawRecord], now_ms: int | None = None) -> BatchResult:
        """Validate every record, then decide duplicates for the valid ones in one call."""
        out = BatchResult()
        pseudonymizer = self.pseudonymizer
        events: list[dict[str, Any]] = []
        sources: list[tuple[int, int, bytes | None, bytes]] = []
        seen_ms = now_ms or 0
        with self.clock.stage("parse"):
            for key, value, partition, offset, ts_ms in records:
                received = ts_ms if ts_ms > 0 else (now_ms or 0)
                raw = value if value is not None else b""
                event = parse_event(raw, received, pseudonymizer)
                if isinstance(event, Rejection):
                    out.invalid[event.reason] += 1
                    out.dlq.append((key, dlq_record(event.reason, event.detail, raw, received)))
                    continue
                events.append(event)
                sources.append((partition, offset, key, raw))
                if not now_ms:
                    seen_ms = max(seen_ms, received)
        if not events:
            return out
        with self.clock.stage("dedup"):
            duplicate = self.dedup.check(
                [e["event_id"] for e in events],
                [s[0] for s in sources],
                [s[1] for s in sources],
                seen_ms,
            )
        valid_add, source_add = out.valid.append, out.sources.append
        for event, source, dup in zip(events, sources, duplicate, strict=True):
            if dup:
                out.duplicates += 1
            else:
                valid_add(event)
                source_add(source)
        return out
