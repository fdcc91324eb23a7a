"""Build the Faust app from one frozen :class:`~stream.config.Settings` object.

>>> app = create_app(Settings.from_env({}))  # doctest: +SKIP
>>> app.main()                                # doctest: +SKIP
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Any

import faust

from agents.erase import EraseAgent
from agents.ingest import IngestAgent
from agents.merge import MergeAgent
from stream.config import Settings
from stream.core.pipeline import Pipeline
from stream.core.rocks_budget import RocksBudget
from stream.http import views
from stream.kafka import sensors
from stream.kafka.faust_internals import (
    TableStores,
    leave_group_when_static,
    message_topic,
    recover_latest_only,
    recover_to_last_records,
    use_batch_consumer,
    use_rocks_budget,
)
from stream.kafka.followers import TopicFollower
from stream.kafka.topics import CHECKPOINT_MAX_BYTES
from stream.kafka.transactions import Transactions
from stream.kafka.writer import EventWriter
from stream.runtime import LATEST_ONLY, TABLES, Runtime
from stream.telemetry import PulseMetrics

log = logging.getLogger(__name__)


def broker_credentials(settings: Settings) -> Any:
    """Faust credentials (consumer, producer, topic admin) from the PULSE_KAFKA_* settings.

    ``None`` for PLAINTEXT; TLS for SSL / SASL_SSL (PULSE_KAFKA_SSL_CAFILE or the
    system CAs); SASL username and password for SASL_PLAINTEXT / SASL_SSL.
    """
    settings.check_kafka_security()
    protocol = settings.kafka_security_protocol
    context = settings.kafka_ssl_context()
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    if not protocol.startswith("SASL_"):
        return None
    return faust.SASLCredentials(
        username=settings.kafka_username,
        password=settings.kafka_password,
        mechanism=settings.kafka_sasl_mechanism,
        ssl_context=context,
    )


def tune_gc() -> None:
    """Fewer full garbage collections for a long-lived worker with large state.

    A worker keeps millions of small containers (24 h of event ids, per-user
    model state); CPython's default thresholds walk all of them in a full
    collection every ~70k allocations, which cost a fifth of the per-event time
    at 400k events. State here is acyclic, so rarer collections only delay
    freeing the few cycles libraries create. Objects from start-up (modules,
    libraries) are frozen out of collections altogether.
    """
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)


def create_app(settings: Settings) -> faust.App:
    """A configured Pulse worker app: topics, tables, agents and web views.

    Builds the pipeline once (a bad rules file stops here) and only wires.
    """
    tune_gc()
    pipeline = Pipeline(settings.pipeline_config())
    batch = settings.batch_size
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{h.strip()}" for h in settings.kafka_bootstrap.split(",")],
        broker_credentials=broker_credentials(settings),
        store="rocksdb://" if settings.store == "rocksdb" else "memory://",
        autodiscover=False,
        datadir=f"{settings.data_dir}/{settings.app_id}",
        web_enabled=True,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        canonical_url=settings.advertised_url or None,
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
        # static membership: a restarted worker takes its partitions back at once
        consumer_group_instance_id=settings.group_instance_id(),
    )
    use_batch_consumer(app, read_committed=settings.transactions)
    txns = None
    if settings.transactions:
        recover_to_last_records(settings)  # changelogs written in transactions end in markers
        txns = Transactions(settings, group_id=settings.app_id)
        app.transaction_offsets = txns.committed  # type: ignore[attr-defined]  # lag, progress
    budget = RocksBudget(settings.store_memory) if settings.store == "rocksdb" else None
    if budget is not None:
        use_rocks_budget(budget)  # Faust's tables and the dedup index share PULSE_STORE_MEMORY
    leave_group_when_static()  # aiokafka leaves no group as a static member: on stop, do
    tables: dict[str, Any] = {}
    for name, (spread, help_text) in TABLES.items():
        partitions = settings.partitions if spread == "events" else 1
        changelog = None
        if name == "identities":  # identity records are a topic of the contract
            changelog = app.topic(
                settings.topic(name), partitions=partitions, compacting=True, key_type=str
            )
        elif name == "recommenders":  # item statistics of a big catalog exceed 1 MB
            changelog = app.topic(
                f"{settings.app_id}-{name}-changelog",
                partitions=partitions,
                compacting=True,
                key_type=str,
                config={"max.message.bytes": str(CHECKPOINT_MAX_BYTES)},
            )
        tables[name] = app.Table(
            name,
            default=None,
            partitions=partitions,
            key_type=str,
            help=help_text,
            changelog_topic=changelog,
        )
    rt = Runtime(
        settings=settings,
        metrics=PulseMetrics(),
        writer=EventWriter(settings),
        pipeline=pipeline,
        stores=TableStores(tables),
        changelogs={name: t.changelog_topic.get_topic_name() for name, t in tables.items()},
        id_dir=str(Path(settings.data_dir) / settings.app_id / "dedup-ids"),  # emptied at start
        rocks_budget=budget,
        transactions=txns,
    )
    # one key per changelog partition: the last record is the whole table
    recover_latest_only(rt.changelogs[name] for name in LATEST_ONLY)

    @app.service
    class WriterService(faust.Service):  # the collector's acks=all producer
        async def on_start(self) -> None:
            await rt.writer.start()

        async def on_stop(self) -> None:
            await rt.writer.stop()
            if rt.transactions is not None:
                await rt.transactions.stop()

    async def _assigned(app: Any, *args: Any, **kwargs: Any) -> None:
        rt.assigned = True

    app.on_partitions_assigned.connect(_assigned)  # type: ignore[arg-type]

    for name, apply in (
        ("campaigns", rt.apply_campaign_records),
        ("metrics", rt.apply_metric_records),
        ("triggers", rt.apply_trigger_records),
        ("fx", rt.apply_fx_records),
    ):
        follower = TopicFollower(settings, settings.topic(name), apply)
        app.service(follower)  # type: ignore[arg-type]
        if name == "fx":  # events convert with every rate known at start (replays agree)
            rt.fx_ready = follower.caught_up

    acks = not settings.transactions  # else offsets are committed with each batch
    events = message_topic(app, settings.topic("events"), settings.partitions, acks)
    partials = message_topic(app, settings.topic("metrics.partials"), 1, acks)
    IngestAgent(rt).attach(app, events, tables)
    EraseAgent(rt).attach(app)  # pulse erase
    MergeAgent(rt).attach(app, partials, tables["merger"])
    sensors.install(app, rt.metrics)
    views.register(app, rt)
    return app
