"""Which source partition a key is on, and which worker holds it (to forward requests).

Keys are partitioned as Kafka's default partitioner does (murmur2 of the key), so a
user's events and their per-user state are on ``partition_for(user id)``. Faust's
assignor tells every worker the URL of the worker holding each partition of the
topics it consumes.

>>> partition_for(b"alice", 4), partition_for(b"bob", 4)
(1, 2)
"""

from __future__ import annotations

from typing import Any

from aiokafka.partitioner import murmur2
from faust.types import TP


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def owned(app: Any, topic: str) -> set[int]:
    """The partitions of ``topic`` this worker holds now."""
    return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic}


def owner_url(app: Any, topic: str, partition: int) -> str | None:
    """The URL of the worker holding ``topic``'s ``partition`` (None before an assignment)."""
    urls = getattr(app.assignor, "_external_tps_url", {})
    url = urls.get(TP(topic, partition))
    return str(url) if url else None
