"""Create Pulse's topics on the broker (idempotent) with the configured partitions."""

from __future__ import annotations

import contextlib
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from stream.config import Settings

log = logging.getLogger(__name__)

#: short name -> extra topic config
TOPICS: dict[str, dict[str, str]] = {
    "events": {"max.message.bytes": str(16 * 1024 * 1024)},
    "events.dlq": {},
    "metrics": {},
    "triggers": {},
    "campaigns": {"cleanup.policy": "compact"},
}
#: internal topics with a fixed partition count
INTERNAL: dict[str, int] = {"metrics.partials": 1}


async def ensure_topics(settings: Settings) -> list[str]:
    """Create missing Pulse topics; return the names created."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=f"{settings.app_id}-admin",
        request_timeout_ms=15000,
        **settings.kafka_client_kwargs(),
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(
                name=settings.topic(short),
                num_partitions=settings.partitions,
                replication_factor=settings.replication_factor,
                topic_configs=cfg,
            )
            for short, cfg in TOPICS.items()
            if settings.topic(short) not in existing
        ] + [
            NewTopic(
                name=settings.topic(short),
                num_partitions=n,
                replication_factor=settings.replication_factor,
            )
            for short, n in INTERNAL.items()
            if settings.topic(short) not in existing
        ]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker won the race
                await admin.create_topics(wanted)
            log.info("created topics %s", [t.name for t in wanted])
        return [t.name for t in wanted]
    finally:
        await admin.close()
