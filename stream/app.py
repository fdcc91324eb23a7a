"""Build the Faust app from one frozen :class:`~stream.config.Settings` object.

>>> app = create_app(Settings.from_env({}))  # doctest: +SKIP
>>> app.main()                                # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust

from stream.batching import message_topic
from stream.config import Settings
from stream.core.dedup import Deduplicator
from stream.core.ingest import Ingestor
from stream.metrics import PulseMetrics
from stream.producer import EventWriter

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """What the agents and web views of one worker share."""

    settings: Settings
    metrics: PulseMetrics
    writer: EventWriter
    topics: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)
    ingestor: Ingestor | None = None
    assigned: bool = False

    def dedup(self) -> Deduplicator:
        """The worker's deduplicator over the changelog-backed ``dedup`` table."""
        if self.ingestor is None:
            table = self.tables["dedup"]
            self.ingestor = Ingestor(
                Deduplicator(table.data, ttl_ms=int(self.settings.dedup_ttl_s * 1000))
            )
        return self.ingestor.dedup


def broker_credentials(settings: Settings) -> Any:
    if not settings.kafka_sasl_mechanism:
        return None
    ssl = None
    if settings.kafka_security_protocol == "SASL_SSL":
        from aiokafka.helpers import create_ssl_context

        ssl = create_ssl_context()
    return faust.SASLCredentials(
        username=settings.kafka_username,
        password=settings.kafka_password,
        mechanism=settings.kafka_sasl_mechanism,
        ssl_context=ssl,
    )


def create_app(settings: Settings) -> faust.App:
    """A configured Pulse worker app: topics, tables, agents and web views."""
    from agents import ingest
    from stream import web

    batch = settings.batch_size
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{h.strip()}" for h in settings.kafka_bootstrap.split(",")],
        broker_credentials=broker_credentials(settings),
        store="memory://",
        autodiscover=False,
        datadir=f"{settings.data_dir}/{settings.app_id}",
        web_enabled=True,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_transport="tcp://",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,
        producer_acks=-1,
        producer_linger_ms=5,
        producer_max_batch_size=256 * 1024,
        consumer_max_fetch_size=16 * 1024 * 1024,
        broker_max_poll_records=batch,
        stream_buffer_maxsize=batch * 4,
        broker_commit_every=batch * 10,
        broker_commit_interval=1.0,
        table_standby_replicas=0,
        logging_config=None,
    )
    rt = Runtime(settings=settings, metrics=PulseMetrics(), writer=EventWriter(settings))
    rt.topics["events"] = message_topic(app, settings.topic("events"), settings.partitions)
    rt.tables["dedup"] = app.Table(
        "dedup",
        default=None,
        partitions=settings.partitions,
        key_type=str,
        help="event_id -> [first_seen_ms, partition, offset]",
    )
    app.pulse = rt  # type: ignore[attr-defined]

    @app.service
    class WriterService(faust.Service):  # the collector's acks=all producer
        async def on_start(self) -> None:
            await rt.writer.start()

        async def on_stop(self) -> None:
            await rt.writer.stop()

    async def _assigned(app: Any, *args: Any, **kwargs: Any) -> None:
        rt.assigned = True

    app.on_partitions_assigned.connect(_assigned)  # type: ignore[arg-type]

    async def _revoked(app: Any, revoked: Any = (), **kwargs: Any) -> None:
        events = settings.topic("events")
        if rt.ingestor is not None:
            rt.ingestor.dedup.forget_partitions(
                tp.partition for tp in revoked if tp.topic == events
            )

    app.on_partitions_revoked.connect(_revoked)  # type: ignore[arg-type]

    async def _recovered(**kwargs: Any) -> None:
        n = rt.dedup().rebuild(rt.tables["dedup"].data.items())
        log.info("dedup state restored: %d event ids", n)

    rt.tables["dedup"].on_recover(_recovered)

    ingest.register(app, rt)
    web.register(app, rt)
    return app
