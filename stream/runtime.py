"""What the agents and web views of one worker share; imports no agent and no view.

Imports flow one way: ``stream.app`` -> ``agents`` / ``stream.http`` -> this
module -> ``stream.core`` (and the Kafka glue in ``stream.kafka``). Agents turn
a batch into :class:`Send` items (plain data) and :meth:`Runtime.deliver`
writes them, in order, each acknowledged before the next.

>>> rt = Runtime.offline(Settings.from_env({}))
>>> rt.stage.process([], None).touched, rt.changelogs["windows"]
({}, 'pulse-windows-changelog')
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import orjson

from stream.config import Settings
from stream.core import plainstate
from stream.core.campaigns import CampaignSettingsStore, CampaignView
from stream.core.credit import AttributionView
from stream.core.dedup_rocks import RocksDeduplicator
from stream.core.pipeline import MergeStage, PartitionStage, Pipeline
from stream.core.propensity import PropensityModel
from stream.core.recommend import Recommender
from stream.core.rocks_budget import RocksBudget
from stream.core.sealing import StateKey, StateRecordError
from stream.core.windows import window_start
from stream.failpoints import FAILPOINTS
from stream.kafka.transactions import Transactions
from stream.kafka.writer import EventWriter, KeyValue, until_written
from stream.telemetry import PulseMetrics

log = logging.getLogger(__name__)

#: the tables of a worker: name -> (partitions, what they hold); every one is changelog-backed.
#: Event ids are not a table: they live in the dedup log (``Settings.dedup_log``).
TABLES = {
    "windows": ("events", "source partition -> open windows and watermark"),
    "clicks": (
        "events",
        "user -> [ts, campaign, variant, channel, partition, earlier clicks, conversion times]",
    ),
    "merger": ("one", "'merger' -> partials merged so far"),
    "identities": (
        "events",
        "id -> {p, ids linked into it, merges, seen, into: the identity it went into}",
    ),
    "models": (
        "events",
        "source partition -> model checkpoint (sealed plain data, base64)",
    ),
    "recommenders": (
        "events",
        "source partition -> recommender checkpoint: item statistics and sessions (sealed)",
    ),
}
#: tables whose changelog partition holds one key, each record the whole value
LATEST_ONLY = ("windows", "merger", "models", "recommenders")


class PartitionedStore(Protocol):
    """Key-value state whose writes name their partition (``faust_internals.TableStore``)."""

    def get(self, key: str) -> Any: ...
    def put(self, partition: int, key: str, value: Any) -> None: ...
    def remove(self, partition: int, key: str) -> None: ...


class DictStore:
    """A plain dict as a :class:`PartitionedStore` (offline runtimes, tests)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def put(self, partition: int, key: str, value: Any) -> None:
        self.data[key] = value

    def remove(self, partition: int, key: str) -> None:
        self.data.pop(key, None)


Records = list[tuple[bytes | None, bytes | None]]  # as topic followers hand them over
ByPartition = dict[int, list[tuple[bytes, bytes | None]]]


@dataclass
class Send:
    """One acknowledged write: ``records`` keyed (the producer picks the partition) or
    ``by_partition`` (changelogs: the source partition is given)."""

    topic: str
    records: list[KeyValue] = field(default_factory=list)
    by_partition: ByPartition = field(default_factory=dict)
    what: str = "write"
    #: the failpoint passed once this write is acknowledged (``stream.failpoints.POINTS``)
    failpoint: str = ""
    #: written before the batch's transaction, not in it: records for a topic the worker
    #: reads (its markers would look like records not read yet); a repeat after a crash
    #: must be harmless
    outside: bool = False

    def __bool__(self) -> bool:
        return bool(self.records or self.by_partition)


@dataclass
class Runtime:
    """State, stages, stores and the writer that one worker's agents and views share."""

    settings: Settings
    metrics: PulseMetrics
    writer: EventWriter
    pipeline: Pipeline
    #: table name -> store of the local table (Faust's in a worker, dicts offline)
    stores: Mapping[str, PartitionedStore] = field(default_factory=dict)
    #: table name -> its changelog topic
    changelogs: dict[str, str] = field(default_factory=dict)
    #: where the dedup index keeps full event ids (None: in memory)
    id_dir: str | None = None
    #: PULSE_STORE=rocksdb: the memory budget the dedup index shares with the tables
    rocks_budget: RocksBudget | None = None
    #: PULSE_TRANSACTIONS: the producers that commit a batch with its offsets (None: ordered)
    transactions: Transactions | None = None
    assigned: bool = False
    recovered: bool = False
    #: set once the follower of ``pulse.fx`` has read the topic to its end (None offline)
    fx_ready: asyncio.Event | None = None
    #: bumped under ``lock`` when a rebalance revokes partitions: a batch read before
    #: it belongs to the old assignment and is not processed (nor acknowledged)
    generation: int = 0
    #: the generation whose partition state has been restored; until it equals
    #: ``generation`` the agents process nothing (the state is being replaced)
    restored_generation: int = -1
    #: the generation of the last assignment: a recovery completing after a later
    #: revocation belongs to an assignment that is already gone
    assigned_generation: int = -1
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_activity: dict[int, float] = field(default_factory=dict)
    processed_offsets: dict[int, int] = field(default_factory=dict)  # last offset per partition
    last_checkpoint: dict[int, float] = field(default_factory=dict)  # per source partition
    campaign_settings: CampaignSettingsStore = field(default_factory=CampaignSettingsStore)
    campaigns: CampaignView = field(default_factory=CampaignView)
    #: credit per campaign and channel by each attribution model (``GET /v1/attribution``)
    attribution: AttributionView = field(default_factory=AttributionView)
    _stage: PartitionStage | None = None
    merge: MergeStage = field(init=False)

    def __post_init__(self) -> None:
        for name in TABLES:
            self.changelogs.setdefault(name, f"{self.settings.app_id}-{name}-changelog")
        self.merge = self.new_merge_stage()

    @classmethod
    def offline(cls, settings: Settings) -> Runtime:
        """A runtime over in-memory stores and an unstarted writer (tests drive agents)."""
        return cls(
            settings=settings,
            metrics=PulseMetrics(),
            writer=EventWriter(settings),
            pipeline=Pipeline(settings.pipeline_config()),
            stores={name: DictStore() for name in TABLES},
        )

    def new_merge_stage(self, state: Mapping[str, Any] | None = None) -> MergeStage:
        """The merger and trigger engine, restored from a merger snapshot when given."""
        return self.pipeline.merge_stage(self.campaign_settings.get, state)

    @property
    def state_current(self) -> bool:
        """True once the state of the current assignment is restored (not mid-rebalance)."""
        return self.restored_generation == self.generation

    async def new_generation(self) -> int:
        """A rebalance revokes partitions: wait for the batch in progress, then bump."""
        async with self.lock:
            self.generation += 1
        return self.generation

    @property
    def size_ms(self) -> int:
        return self.pipeline.config.window_ms

    def idle_watermark(self) -> int:
        """Watermark of a partition idle on the wall clock: now − grace, at a window edge."""
        grace = self.pipeline.config.grace_ms
        return window_start(int(time.time() * 1000) - grace, self.size_ms)

    @property
    def state_key(self) -> StateKey:
        return self.pipeline.config.state_key

    def model_blob(self, model: PropensityModel | Recommender) -> str:
        """A model (or recommender) checkpoint as its changelog value: sealed plain data,
        base64."""
        return base64.b64encode(self.state_key.seal(plainstate.dumps(model.to_state()))).decode()

    def load_recommender(self, blob: str, where: str) -> Recommender:
        """A fresh recommender set to a :meth:`model_blob` checkpoint once its seal is checked."""
        reco = self.stage.new_recommender()
        reco.load_state(self.plain_checkpoint(blob, where))
        return reco

    def load_model(self, blob: str, where: str) -> PropensityModel | None:
        """A fresh model set to a :meth:`model_blob` checkpoint once its seal is checked.

        Only plain data is read, never a pickle (those of earlier releases are
        refused: they could run code); None when offers are disabled.
        """
        state = self.plain_checkpoint(blob, where)
        new_model = self.stage.new_model
        if new_model is None:
            return None
        model = new_model()
        model.load_state(state)
        return model

    def plain_checkpoint(self, blob: str, where: str) -> Any:
        """The plain data of a :meth:`model_blob` checkpoint once its seal is checked."""
        payload = self.state_key.open(base64.b64decode(blob), where)
        if not payload.startswith(plainstate.MAGIC):
            raise StateRecordError(
                f"{where} is not a plain-data checkpoint (a pickle of an earlier "
                "release, or not written by Pulse) and is not loaded, as a pickle could run "
                "code; the model relearns from the stream once the record is deleted"
            )
        return plainstate.loads(payload)

    @property
    def stage(self) -> PartitionStage:
        """Ingest, dedup and windows (made on first use)."""
        if self._stage is None:
            dedup = None
            if self.rocks_budget is not None and self.id_dir is not None:
                ttl = self.pipeline.config.dedup_ttl_ms
                dedup = RocksDeduplicator(ttl, f"{self.id_dir}/rocks", self.rocks_budget)
            self._stage = self.pipeline.partition_stage(self.id_dir, dedup, self.metrics.clock)
        return self._stage

    @property
    def stage_built(self) -> bool:
        return self._stage is not None

    async def commit(
        self,
        unit: str,
        sends: list[Send],
        offsets: Mapping[Any, int] | None = None,
        failpoint: str = "",
    ) -> bool:
        """A batch's writes, with ``offsets`` in one transaction when transactions are on.

        Returns True when ``offsets`` were committed with them; False when they
        were only written (in order, :meth:`deliver`) and the caller acknowledges
        the offsets to Faust.
        """
        if self.transactions is None:
            await self.deliver(sends)
            return False
        await self.deliver([s for s in sends if s.outside])
        await self.transactions.commit(
            unit, [s for s in sends if not s.outside], offsets, failpoint
        )
        return True

    async def deliver(self, sends: list[Send]) -> None:
        """Write each non-empty send in order, retrying each until Kafka acknowledges it.

        Each send's failpoint is passed after it, written or empty (crash tests).
        """
        for send in sends:
            if send.by_partition:
                await until_written(
                    partial(self.writer.send_partitioned, send.topic, send.by_partition), send.what
                )
            if send.records:
                await until_written(
                    partial(self.writer.send_many, send.records, send.topic), send.what
                )
            if send.failpoint:
                FAILPOINTS.reached(send.failpoint)

    # -- topics every worker follows in full (stream.kafka.followers.TopicFollower) --------

    def apply_campaign_records(self, records: Records) -> None:
        """Latest settings per campaign from ``pulse.campaigns`` (a tombstone deletes).

        A bad value is logged and counted (``pulse_campaign_settings_rejected_total``);
        the campaign keeps its previous settings.
        """
        rules = self.pipeline.config.rules
        for key, value in records:
            if key is None:
                continue
            cid = key.decode(errors="replace")
            try:
                parsed = orjson.loads(value) if value else None
            except orjson.JSONDecodeError:
                log.warning("rejected settings for campaign %r: the value is not JSON", cid)
                self.metrics.count_settings_rejected("json")
                continue
            rejected = self.campaign_settings.apply(cid, parsed, rules)
            if rejected is not None:
                log.warning("campaign %r keeps its previous settings: %s", cid, rejected)
                self.metrics.count_settings_rejected(rejected.reason)

    def apply_fx_records(self, records: Records) -> None:
        """Exchange rates from ``pulse.fx`` into the pipeline's table (a bad one is logged)."""
        fx = self.pipeline.config.fx
        for key, value in records:
            refused = fx.apply(key, value)
            if refused is not None:
                log.warning("ignored pulse.fx record %r: %s", key, refused)

    def apply_metric_records(self, records: Records) -> None:
        for _, value in records:
            if value:
                rec = orjson.loads(value)
                self.campaigns.apply(rec)
                self.attribution.apply(rec)

    def apply_trigger_records(self, records: Records) -> None:
        for _, value in records:
            if value:
                self.campaigns.add_trigger(orjson.loads(value))
