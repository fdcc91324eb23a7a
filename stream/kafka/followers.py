"""Follow a whole topic from the beginning on every worker (no consumer group).

Used for state every worker must see in full: campaign settings from the
compacted ``pulse.campaigns`` and closed windows from ``pulse.metrics`` (so the
query API answers the same on any worker).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer

from stream.config import Settings

log = logging.getLogger(__name__)

Apply = Callable[[list[tuple[bytes | None, bytes | None]]], None]


class TopicFollower(faust.Service):
    """Read ``topic`` from its first offset forever, handing record batches to ``apply``."""

    def __init__(self, settings: Settings, topic: str, apply: Apply, **kwargs: Any) -> None:
        self.settings = settings
        self.topic_name = topic
        self.apply = apply
        self.caught_up = asyncio.Event()
        super().__init__(**kwargs)

    @faust.Service.task
    async def _follow(self) -> None:
        while not self.should_stop:
            consumer = AIOKafkaConsumer(
                self.topic_name,
                bootstrap_servers=self.settings.kafka_bootstrap,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                isolation_level="read_committed",  # records of aborted transactions unseen
                **self.settings.kafka_client_kwargs(),
            )
            try:
                await consumer.start()
                while not self.should_stop:
                    batches = await consumer.getmany(timeout_ms=500, max_records=5000)
                    for records in batches.values():
                        self.apply([(r.key, r.value) for r in records])
                    if not batches:
                        self.caught_up.set()
            except Exception as exc:  # keep following across broker outages
                log.warning("following %s failed (%r); retrying", self.topic_name, exc)
                await asyncio.sleep(2.0)
            finally:
                await consumer.stop()
