"""Agents driven through ``handle()`` on an offline runtime: no broker, no Faust app.

As httpx tests swap the transport, these swap the writer: ``handle()`` returns the
writes (``Send`` items) and the tests look at them instead of Kafka.
"""

from __future__ import annotations

import orjson
import pytest

from stream.config import Settings
from stream.runtime import Runtime, Send

T0 = 1_714_564_800_000  # a window edge (60 s windows)


@pytest.fixture
def rt() -> Runtime:
    return Runtime.offline(Settings.from_env({"PULSE_WINDOW": "60s", "PULSE_GRACE": "5s"}))


def event(
    eid: str, kind: str = "view", at: int = T0, user: str = "u1", campaign: str = "c1"
) -> bytes:
    return orjson.dumps(
        {"event_id": eid, "type": kind, "event_time": at, "user_id": user, "campaign_id": campaign}
    )


def sent(sends: list[Send], topic: str) -> list[tuple[int | None, bytes | None, bytes | None]]:
    """Every record written to ``topic``: (partition or None for keyed, key, value)."""
    out: list[tuple[int | None, bytes | None, bytes | None]] = []
    for s in sends:
        if s.topic == topic:
            out += [(None, k, v) for k, v in s.records]
            out += [(p, k, v) for p, items in s.by_partition.items() for k, v in items]
    return out
