"""Every use of a private Faust API, in one place (faust-streaming 0.15.3).

Batch consumption without per-event Stream/Event objects: Faust delivers every
consumed record to its topic's channel queue as an Event, and a Stream then
awaits them one by one (a task per event). For the hot ingestion path
:class:`MessageTopic` keeps the raw consumer ``Message`` in the queue and
:func:`message_batches` drains it in bulk; offsets are committed by Faust as
usual once :func:`ack_all` acknowledges the messages. That queue (:class:`RawQueue`)
is emptied when a rebalance starts but not when recovery ends, when Faust's clear
would drop records fetched after the seek to the committed offsets.

Faust drops what a fetch returns while the flow is stopped (a rebalance, a
recovery) and relies on seeking back to the committed offsets afterwards; but
aiokafka's ``seek_to_committed`` skips a partition nothing was ever committed
for, so those records were never read again (:func:`rewind_to_committed`).

A clean stop of a static group member (``consumer_group_instance_id``) sends
LeaveGroup v3 naming its instance id (:func:`leave_group_when_static`):
aiokafka 0.14 sends none for a static member, so its partitions would wait for
the session timeout.

With Kafka transactions (``PULSE_TRANSACTIONS``, :mod:`stream.kafka.transactions`)
the worker's consumer reads ``read_committed`` (:func:`use_batch_consumer`), and
a table's recovery reads its changelog up to the last committed record rather
than to ``end - 1``, which is a transaction marker there, never received, so
Faust's recovery would wait for it forever (:func:`recover_to_last_records`).
A table with one key per changelog partition restores from that partition's
last record alone (:func:`recover_latest_only`).

Partition-aware writes into a table's local store (:class:`TableStore`): Faust
stores pick the partition of a write from the *current event*; batch agents
have no current event, so they name the partition themselves. Works for the
in-memory store and for the RocksDB store (``PULSE_STORE=rocksdb``, backed by
rocksdict). Faust opens each table partition's database with its own 2 GiB block
cache; :func:`use_rocks_budget` opens them all inside one ``PULSE_STORE_MEMORY``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import faust
from aiokafka.consumer.fetcher import OffsetResetStrategy
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import KafkaError
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Int16, Int32, Schema, String
from aiokafka.structs import TopicPartition
from faust.tables.recovery import Recovery
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP
from mode.utils.queues import ThrowableQueue

from stream.core.progress import Progress
from stream.core.rocks_budget import RocksBudget
from stream.kafka.reading import last_data_offsets

if TYPE_CHECKING:
    from stream.config import Settings

log = logging.getLogger(__name__)


class RawQueue(ThrowableQueue):
    """A :class:`MessageTopic`'s queue: emptied when a rebalance starts, not when it ends.

    Faust clears every agent queue when a rebalance suspends the flow (stale
    records of revoked partitions) *and* again in ``flow_control.resume()`` at
    the end of recovery. By then the stream partitions are resumed and seeked to
    their committed offsets, and the fetcher may already have put fresh records
    into this queue: clearing them loses them, and since their offsets were
    read, the consumer counts the jump to the next record as an acknowledged gap
    and commits past them. So a clear with the flow active (the one in
    ``resume()``) keeps what is queued: the consumer resets each partition to its
    committed offset on every assignment, so whatever arrives once the flow
    resumed is in order from there, and a record delivered twice is idempotent
    for the agents.
    """

    def clear(self) -> None:
        if not self._flow_control.is_active():  # suspended: the start of a rebalance, a stop
            super().clear()


class MessageTopic(faust.Topic):
    """A topic whose queue holds raw consumer messages (bytes key and value)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.decode = self._keep_message  # type: ignore[method-assign]  # Faust compiles decode per instance

    @property
    def queue(self) -> RawQueue:
        if self._queue is None:
            maxsize = self.maxsize or self.app.conf.stream_buffer_maxsize
            self._queue = RawQueue(
                maxsize=maxsize, flow_control=self.app.flow_control, clear_on_resume=True
            )
        return self._queue  # type: ignore[return-value]

    async def _keep_message(self, message: Any, *, propagate: bool = False) -> Any:
        return message

    async def put(self, event: Any) -> None:
        """Wait for room; Faust's conductor calls this when the queue is full.

        ``faust.Topic.put`` refuses a topic nobody iterates with ``aiter``;
        :func:`message_batches` reads the queue directly instead.
        """
        await self.queue.put(event)


def message_topic(app: faust.App, name: str, partitions: int, acks: bool = True) -> MessageTopic:
    """``acks=False``: Faust commits no offsets of it (they are committed in transactions)."""
    topic = MessageTopic(
        app,
        topics=[name],
        acks=acks,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
    )
    app.topics.add(topic)  # subscribe without an agent
    return topic


async def message_batches(topic: MessageTopic, max_n: int) -> AsyncIterator[list[Any]]:
    """Yield lists of up to ``max_n`` messages as soon as at least one is there."""
    queue = topic.queue
    get_nowait = queue.get_nowait
    while True:
        batch = [await queue.get()]
        try:
            while len(batch) < max_n:
                batch.append(get_nowait())
        except asyncio.QueueEmpty:
            pass
        yield batch


def ack_all(app: faust.App, messages: Iterable[Any]) -> None:
    """Mark messages processed so Faust may commit past them."""
    consumer = app.consumer
    for message in messages:
        message.ack(consumer)


class BatchConsumer(AIOKafkaConsumer):
    """Faust's aiokafka consumer, minus four futures per delivered record.

    Faust hands every fetched record to the conductor inside
    ``wait_first(callback(message), suspend_flow.wait())`` so that a rebalance
    can abandon a delivery blocked on a full queue. That wrapper costs a task
    and three futures per record (about a fifth of a worker's CPU at full
    drain). Here a record is delivered directly when the delivery cannot block:
    flow not suspended and no subscribed queue full; records of
    :class:`MessageTopic` partitions go straight into its queue (the conductor
    would only wrap them in a decode coroutine that returns them unchanged).
    Otherwise the original cancellable path is taken, so rebalance behaviour
    is unchanged.
    """

    #: read only committed records (set by :func:`use_batch_consumer`)
    read_committed = False

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        if self.read_committed:
            return _ReadCommittedThread(self, loop=self.loop, beacon=self.beacon)
        return super()._new_consumer_thread()

    async def seek_to_committed(self) -> Mapping[TP, int]:  # pragma: no cover - needs a broker
        """Back to the committed offsets, also where none is (:func:`rewind_to_committed`)."""
        thread: Any = self._thread
        return await thread.call_thread(rewind_to_committed, thread._ensure_consumer())

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - needs a broker
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        suspended = self.suspend_flow.is_set
        flow_active = self.app.flow_control.is_active
        channels_of = self.app.topics._tp_index.get  # type: ignore[attr-defined]
        since_yield = 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                direct: dict[Any, Any] = {}  # per fetch: tp -> queue of its raw-message topic
                set_flag(CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        since_yield += 1
                        if since_yield > 100:
                            await asyncio.sleep(0)
                            since_yield = 0
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is not None and offset < r_offset:
                            continue  # already delivered before a seek
                        gap = offset - (r_offset or 0)
                        if gap > 1 and r_offset and acks_enabled_for(message.topic):
                            await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            await self.commit()
                        if suspended() or not flow_active():
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                        else:
                            queue = direct.get(tp, _UNKNOWN)
                            if queue is _UNKNOWN:
                                queue = direct[tp] = _raw_queue(channels_of(tp, ()))
                            if queue is not None and not queue.full():
                                queue.put_nowait(message)  # no conductor, no decode coroutine
                            elif not any(ch.queue.full() for ch in channels_of(tp, ())):
                                await callback(message)
                            else:
                                await self.wait_first(callback(message), self.suspend_flow.wait())
                        set_read_offset(tp, offset)
                    unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)


_UNKNOWN = object()


class _ReadCommittedThread(AIOKafkaConsumerThread):
    """Faust's consumer thread whose worker consumer reads ``read_committed``.

    Faust sets that isolation only with its own exactly-once processing, which
    also replaces the producer; Pulse runs its own transactions.
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._isolation_level = "read_committed"  # read by start(), when the fetcher is made
        return consumer


def _raw_queue(channels: Iterable[Any]) -> Any:
    """The queue of the only channel when it is a :class:`MessageTopic`, else None."""
    channels = tuple(channels)
    if len(channels) == 1 and isinstance(channels[0], MessageTopic):
        return channels[0].queue
    return None


async def rewind_to_committed(consumer: Any) -> dict[Any, int | None]:
    """``AIOKafkaConsumer.seek_to_committed``, plus a rewind where nothing is committed.

    Faust discards every record a fetch returns while its flow is stopped (in
    ``Consumer.getmany``) and calls this, as at the end of each recovery, to read
    them again. aiokafka seeks only partitions with a committed offset above 0: a
    partition never committed (a new topic, a partition without traffic so far,
    offsets expired) kept the position past the discarded records, which were then
    never processed (and a record processed after them would be committed past them).
    Such a partition goes back to where the assignment started it: the consumer's
    ``auto_offset_reset`` (earliest for Faust), and an offset 0 to 0.

    This happened on the clean stop of one of two workers: the other one took the
    stopped one's partitions (nothing committed on them yet), fetched their records
    while its recovery had paused every partition, and aiokafka's
    ``fetched_records`` treats an empty set of partitions as all of them.
    """
    committed: dict[Any, int | None] = await consumer.seek_to_committed()
    fetcher = consumer._fetcher
    for tp, offset in committed.items():
        if offset == 0:
            fetcher.seek_to(tp, 0)
    unset = [tp for tp, offset in committed.items() if offset is None or offset < 0]
    strategy = fetcher._default_reset_strategy
    if unset and strategy != OffsetResetStrategy.NONE:
        log.debug("no committed offset for %s: rewound by auto_offset_reset", unset)
        reset = fetcher.request_offset_reset(unset, strategy)
        await asyncio.wait(  # as AIOKafkaConsumer.seek_to_beginning
            [reset, consumer._subscription.subscription.assignment.unassign_future],
            timeout=consumer._request_timeout_ms / 1000,
            return_when=asyncio.FIRST_COMPLETED,
        )
    return committed


def use_batch_consumer(app: faust.App, read_committed: bool = False) -> None:
    """Make ``app`` create :class:`BatchConsumer` (call before the worker starts)."""
    consumer = ReadCommittedBatchConsumer if read_committed else BatchConsumer
    app.transport.Consumer = consumer  # type: ignore[misc]


class ReadCommittedBatchConsumer(BatchConsumer):
    """:class:`BatchConsumer` reading ``read_committed`` (Kafka transactions are on)."""

    read_committed = True


#: the settings :func:`recover_to_last_records` reads changelog tails with
_TAIL_SETTINGS: list[Settings] = []


def recover_to_last_records(settings: Settings) -> None:
    """Table recovery reads each changelog up to its last committed record (transactions).

    Faust's recovery is done when it has received offset ``end - 1`` of every
    changelog partition (the end being the last stable offset for a
    ``read_committed`` consumer). A partition written in transactions ends with
    a marker at ``end - 1``, which no reader receives; Faust detects that only
    in its own exactly-once mode and only after two 5 s waits. Here the target
    is the offset of the last record a reader does receive
    (:func:`stream.kafka.reading.last_data_offsets`), found by reading each
    partition's tail once when the recovery starts. Patched once per process;
    the settings of the last call are the ones used.
    """
    first = not _TAIL_SETTINGS
    _TAIL_SETTINGS[:] = [settings]
    if not first:
        return
    original = Recovery._build_highwaters

    async def _build_highwaters(
        self: Recovery, consumer: Any, tps: Any, destination: Any, title: str
    ) -> None:
        await original(self, consumer, tps, destination, title)
        ends = {(tp.topic, tp.partition): v + 1 for tp, v in destination.items() if v >= 0}
        if ends:
            last = await last_data_offsets(_TAIL_SETTINGS[0], ends)
            for (topic, partition), offset in last.items():
                destination[TP(topic, partition)] = offset
            log.info("%s changelogs end at their last committed records: %s", title, last)

    Recovery._build_highwaters = _build_highwaters  # type: ignore[method-assign]


#: changelogs restored from their last record alone (:func:`recover_latest_only`)
_LATEST_ONLY: set[str] = set()


def recover_latest_only(changelogs: Iterable[str]) -> None:
    """Recovery reads only the last record of each partition of ``changelogs``.

    For tables with one key per changelog partition (the window snapshot, the
    model checkpoint and the merger state of a partition: each record replaces
    the whole value), the last record *is* the table. Faust would read every
    snapshot since the last compaction (thousands after a busy day, compaction
    never touches the active segment); here the reading starts at the last one,
    so a restore costs one record per partition whatever the history. Runs
    after the highwaters are known (:func:`recover_to_last_records` moves them to
    the last committed record first). Offsets a persistent store already holds
    are kept when they are further on.
    """
    first = not _LATEST_ONLY
    _LATEST_ONLY.update(changelogs)
    if not first:
        return
    original = Recovery._build_offsets

    async def _build_offsets(
        self: Recovery, consumer: Any, tps: Any, destination: Any, title: str
    ) -> None:
        await original(self, consumer, tps, destination, title)
        if title != "active":
            return
        for tp in tps:
            last = self.active_highwaters.get(tp, -1)
            if tp.topic in _LATEST_ONLY and last > destination[tp] + 1:
                destination[tp] = last - 1  # Faust seeks to the offset after: ``last``
                log.info("%s: restored from its last record (offset %d) alone", tp, last)

    Recovery._build_offsets = _build_offsets  # type: ignore[method-assign]


def recovery_pending(app: faust.App) -> bool:
    """A newer rebalance waits for its recovery, so the one completing now is stale.

    Faust calls the tables' ``on_recover`` callbacks at the end of a recovery even
    when another rebalance has begun meanwhile (it only checks the generation
    afterwards): the assignment is the new one then, its changelogs not read yet.
    The next recovery calls the callbacks again.
    """
    return bool(app.tables.recovery.signal_recovery_start.is_set())  # type: ignore[attr-defined]


def partition_progress(app: faust.App, topic: str, partition: int) -> Progress:
    """What the consumer knows of a partition, for :func:`stream.core.progress.caught_up`."""
    consumer = app.consumer
    tp = TP(topic, partition)
    try:
        kafka = consumer._thread._ensure_consumer()  # type: ignore[attr-defined]
        state = kafka._subscription.subscription.assignment.state_value(tp)
    except Exception:  # not started, or rebalancing: nothing is known
        state = None
    if state is None:
        return {"highwater": None, "polled_ms": None, "position": None, "committed": None}
    return {
        "highwater": state.highwater,
        "polled_ms": state.timestamp,
        "position": state.position if state.has_valid_position else None,
        "committed": committed_offsets(app).get(tp),
    }


def committed_offsets(app: faust.App) -> dict[TP, int]:
    """The offsets the worker last committed, per partition (its consumer's, or in transactions)."""
    committed: dict[TP, int] = app.consumer._committed_offset  # type: ignore[attr-defined]
    in_txns: dict[TopicPartition, int] = getattr(app, "transaction_offsets", {})
    if in_txns:  # Transactions.committed, when the app commits in transactions
        committed = {**committed, **{TP(tp.topic, tp.partition): o for tp, o in in_txns.items()}}
    return committed


class TableStore:
    """``get`` / ``put(partition, …)`` / ``remove(partition, …)`` over ``table.data``."""

    def __init__(self, table: Any) -> None:
        self.data = table.data
        self.rocks = hasattr(self.data, "_db_for_partition")
        # In memory, read the plain dict: the store's Mapping.get raises and catches
        # a KeyError for every miss (most event ids), several times slower.
        self.get: Callable[[Any], Any] = self.data.get if self.rocks else self.data.data.get

    def put(self, partition: int, key: Any, value: Any) -> None:
        data = self.data
        if self.rocks:
            raw_key = data._encode_key(key)
            data._db_for_partition(partition).put(raw_key, data._encode_value(value))
            data._key_index[raw_key] = partition
        else:
            data.data[key] = value
            data._key_partition[key] = partition

    def remove(self, partition: int, key: Any) -> None:
        data = self.data
        if self.rocks:
            data._db_for_partition(partition).delete(data._encode_key(key))
        else:
            data.data.pop(key, None)
            data._key_partition.pop(key, None)

    def items(self) -> Iterator[tuple[Any, Any]]:
        return iter(self.data.items())


class TableStores(dict[str, TableStore]):
    """A :class:`TableStore` per table name, made on first use (after recovery)."""

    def __init__(self, tables: dict[str, Any]) -> None:
        super().__init__()
        self.tables = tables

    def __missing__(self, name: str) -> TableStore:
        store = self[name] = TableStore(self.tables[name])
        return store


class _LeaveGroupResponseV3(Response):
    API_KEY = 13
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        (
            "members",
            Array(
                ("member_id", String("utf-8")),
                ("group_instance_id", String("utf-8")),
                ("error_code", Int16),
            ),
        ),
    )


class _LeaveGroupRequestV3(RequestStruct):
    API_KEY = 13
    API_VERSION = 3
    RESPONSE_TYPE = _LeaveGroupResponseV3
    SCHEMA = Schema(
        ("group", String("utf-8")),
        ("members", Array(("member_id", String("utf-8")), ("group_instance_id", String("utf-8")))),
    )


class StaticLeaveGroup(Request[_LeaveGroupRequestV3]):
    """LeaveGroup v3 (KIP-345): removes the static member ``instance_id`` from the group."""

    API_KEY = 13

    def __init__(self, group: str, member_id: str, instance_id: str) -> None:
        self.group, self.member_id, self.instance_id = group, member_id, instance_id

    def build(self, request_struct_class: type[_LeaveGroupRequestV3]) -> _LeaveGroupRequestV3:
        return request_struct_class(self.group, [(self.member_id, self.instance_id)])


def leave_group_when_static() -> None:
    """Make aiokafka's group coordinator leave the group on close also as a static member."""
    if getattr(GroupCoordinator, "_pulse_static_leave", False):
        return
    plain_leave = GroupCoordinator._maybe_leave_group

    async def _maybe_leave_group(self: Any) -> None:
        instance = self._group_instance_id
        if self.generation > 0 and instance is not None:
            try:
                resp = await self._send_req(
                    StaticLeaveGroup(self.group_id, self.member_id, instance)
                )
            except (KafkaError, NotImplementedError) as err:
                log.warning(
                    "static member %s could not leave group %s: %r", instance, self.group_id, err
                )
            else:
                code = resp.error_code or next((m[2] for m in resp.members if m[2]), 0)
                if code:
                    log.warning(
                        "static member %s leaving group %s: error %d", instance, self.group_id, code
                    )
                else:
                    log.info("static member %s left group %s", instance, self.group_id)
            self.reset_generation()
            return
        await plain_leave(self)

    GroupCoordinator._maybe_leave_group = _maybe_leave_group
    GroupCoordinator._pulse_static_leave = True


def use_rocks_budget(budget: RocksBudget) -> None:
    """Open every Faust RocksDB table inside ``budget`` (one shared cache and memtable cap)."""
    from faust.stores import rocksdb as faust_rocksdb

    def as_options(self: Any) -> Any:
        return budget.options()

    faust_rocksdb.RocksDBOptions.as_options = as_options  # type: ignore[method-assign]
