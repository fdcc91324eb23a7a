"""Build the Faust app from one frozen :class:`~stream.config.Settings` object.

>>> app = create_app(Settings.from_env({}))  # doctest: +SKIP
>>> app.main()                                # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import base64
import gc
import logging
import pickle
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
import orjson

from stream.config import Settings
from stream.core.bandit import Allocator
from stream.core.campaigns import CampaignSettingsStore, CampaignView
from stream.core.dedup import Deduplicator
from stream.core.ingest import Ingestor
from stream.core.merge import WindowMerger
from stream.core.pipeline import MergeStage, PartitionStage
from stream.core.propensity import model_factory
from stream.core.triggers import TriggerEngine, load_rules
from stream.core.windows import PartitionWindows, window_start
from stream.kafka.faust_internals import TableStore, message_topic, use_batch_consumer
from stream.kafka.followers import TopicFollower
from stream.kafka.writer import EventWriter
from stream.telemetry import PulseMetrics

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """What the agents and web views of one worker share."""

    settings: Settings
    metrics: PulseMetrics
    writer: EventWriter
    topics: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)
    assigned: bool = False
    recovered: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_activity: dict[int, float] = field(default_factory=dict)
    processed_offsets: dict[int, int] = field(default_factory=dict)  # last offset per partition
    last_checkpoint: float = 0.0
    campaign_settings: CampaignSettingsStore = field(default_factory=CampaignSettingsStore)
    campaigns: CampaignView = field(default_factory=CampaignView)
    _stage: PartitionStage | None = None
    merge: MergeStage = field(init=False)

    def __post_init__(self) -> None:
        self.merge = self.new_merge_stage()

    def new_merge_stage(self, state: Mapping[str, Any] | None = None) -> MergeStage:
        """The merger and trigger engine, restored from a merger snapshot when given."""
        partitions, size = self.settings.partitions, self.size_ms
        merger = (
            WindowMerger.from_state(state, partitions, size)
            if state
            else WindowMerger(partitions, size)
        )
        engine = TriggerEngine(load_rules(self.settings.rules_file or None))
        allocator = Allocator()
        if state and "engine" in state:
            engine.restore(state["engine"])
            allocator.restore(state.get("allocator", {}))
        return MergeStage(merger, engine, self.campaign_settings.get, allocator)

    @property
    def size_ms(self) -> int:
        return int(self.settings.window_s * 1000)

    def new_partition_windows(self) -> PartitionWindows:
        s = self.settings
        return PartitionWindows(
            self.size_ms, int(s.grace_s * 1000), int(s.attribution_window_s * 1000)
        )

    def idle_watermark(self) -> int:
        """Watermark of a partition idle on the wall clock: now − grace, at a window edge."""
        return window_start(int(time.time() * 1000 - self.settings.grace_s * 1000), self.size_ms)

    @property
    def stage(self) -> PartitionStage:
        """Ingest and windows over the changelog-backed ``dedup`` table (made on first use)."""
        if self._stage is None:
            dedup = Deduplicator(
                TableStore(self.tables["dedup"]), ttl_ms=int(self.settings.dedup_ttl_s * 1000)
            )
            s = self.settings
            models = model_factory(
                load_rules(self.settings.rules_file or None)["user_offer"],
                int(s.attribution_window_s * 1000),
                self.size_ms,
            )
            ingestor = Ingestor(dedup, salt=s.pseudonymize_salt)  # privacy: stream/core/privacy
            self._stage = PartitionStage(ingestor, self.new_partition_windows, models)
        return self._stage


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
    """A configured Pulse worker app: topics, tables, agents and web views."""
    from agents import erase, ingest, merge
    from stream.http import views as web
    from stream.kafka import sensors

    tune_gc()

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
    use_batch_consumer(app)
    rt = Runtime(settings=settings, metrics=PulseMetrics(), writer=EventWriter(settings))
    rt.topics["events"] = message_topic(app, settings.topic("events"), settings.partitions)
    rt.topics["partials"] = message_topic(app, settings.topic("metrics.partials"), 1)
    tables = {
        "dedup": (settings.partitions, "event_id -> [first_seen_ms, partition, offset]"),
        "windows": (settings.partitions, "source partition -> open windows and watermark"),
        "clicks": (settings.partitions, "user -> [ts, campaign, variant, channel, partition]"),
        "merger": (1, "'merger' -> partials merged so far"),
        "models": (settings.partitions, "source partition -> pickled propensity model (base64)"),
    }
    for name, (partitions, help_text) in tables.items():
        rt.tables[name] = app.Table(
            name, default=None, partitions=partitions, key_type=str, help=help_text
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
        gone = [tp.partition for tp in revoked if tp.topic == events]
        for p in gone:
            rt.processed_offsets.pop(p, None)
        if rt._stage is not None:
            rt._stage.ingestor.dedup.forget_partitions(gone)

    app.on_partitions_revoked.connect(_revoked)  # type: ignore[arg-type]

    def owned() -> set[int]:
        events = settings.topic("events")
        return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == events}

    async def _dedup_recovered(**kwargs: Any) -> None:
        n = rt.stage.ingestor.dedup.rebuild(rt.tables["dedup"].data.items())
        log.info("dedup state restored: %d event ids", n)

    async def _windows_recovered(**kwargs: Any) -> None:
        mine = owned()
        s = settings
        rt.stage.windows = {
            int(p): PartitionWindows.from_state(
                state, rt.size_ms, int(s.grace_s * 1000), int(s.attribution_window_s * 1000)
            )
            for p, state in rt.tables["windows"].data.items()
            if state is not None and int(p) in mine
        }
        for user, c in rt.tables["clicks"].data.items():
            if c is not None and c[4] in mine:
                rt.stage.window_state(c[4]).restore_clicks([(user, c)])
        for p, blob in rt.tables["models"].data.items():
            if blob is not None and int(p) in mine:
                rt.stage.models[int(p)] = pickle.loads(base64.b64decode(blob))
        rt.recovered = True
        log.info("window state restored for partitions %s", sorted(rt.stage.windows))

    async def _merger_recovered(**kwargs: Any) -> None:
        rt.merge = rt.new_merge_stage(rt.tables["merger"].data.get("merger"))

    rt.tables["dedup"].on_recover(_dedup_recovered)
    rt.tables["windows"].on_recover(_windows_recovered)
    rt.tables["merger"].on_recover(_merger_recovered)

    def _campaign_record(records: list[tuple[bytes | None, bytes | None]]) -> None:
        for key, value in records:
            if key is not None:
                try:
                    rt.campaign_settings.apply(key.decode(), orjson.loads(value) if value else None)
                except orjson.JSONDecodeError:
                    log.warning("ignoring campaign settings for %r: not JSON", key)

    def _metrics_record(records: list[tuple[bytes | None, bytes | None]]) -> None:
        for _, value in records:
            if value:
                rt.campaigns.apply(orjson.loads(value))

    def _trigger_record(records: list[tuple[bytes | None, bytes | None]]) -> None:
        for _, value in records:
            if value:
                rt.campaigns.add_trigger(orjson.loads(value))

    for name, apply in (
        ("campaigns", _campaign_record),
        ("metrics", _metrics_record),
        ("triggers", _trigger_record),
    ):
        app.service(TopicFollower(settings, settings.topic(name), apply))  # type: ignore[arg-type]

    ingest.register(app, rt)
    erase.register(app, rt)  # pulse erase: agents/erase.py
    merge.register(app, rt)
    sensors.install(app, rt.metrics)
    web.register(app, rt)
    return app
