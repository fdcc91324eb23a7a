"""Kafka transactions: a batch's writes and its source offsets commit together or not at all.

One transactional producer per *unit* of work (a source partition of
``pulse.events``, or the merger), with the transactional id
``<app id>-<unit>``. A batch of a unit is one transaction: every write of the
batch (DLQ records, offers, dedup log, partials, changelogs) and the consumed
offsets (``send_offsets_to_transaction`` for the worker's group). A crash at any
instruction leaves the transaction open; the next producer with the same id
(the restarted worker, or the one the partition moved to) aborts it when it is
initialised, and ``read_committed`` readers never see its records. So the
offsets are committed exactly when the batch's effects are.

Fencing: a worker that lost a unit but still runs (a long pause past its session
timeout) finds its producer fenced by the new owner's. :class:`UnitFenced` is
raised, every later commit of this worker raises it too (a new producer for
the unit would fence the new owner in turn), and ``on_fenced`` is called: by
default it sends this process SIGTERM, a clean stop, after which the worker's
supervisor starts it again and it rejoins the group.

>>> isinstance(UnitFenced("events-3"), RuntimeError)
True
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from aiokafka import AIOKafkaProducer, TopicPartition, errors

from stream.config import Settings
from stream.core.errors import PulseError
from stream.failpoints import FAILPOINTS
from stream.kafka.topics import CHECKPOINT_MAX_BYTES
from stream.kafka.writer import send_batches

log = logging.getLogger(__name__)

#: errors meaning another producer with our transactional id took over
_FENCED = (errors.ProducerFenced, errors.InvalidProducerEpoch)


class UnitFenced(PulseError, RuntimeError):
    """Another worker's producer took over this unit: write nothing more for it."""


class Write(Protocol):
    """What a transaction writes (``stream.runtime.Send``)."""

    @property
    def topic(self) -> str: ...
    @property
    def records(self) -> Sequence[tuple[bytes | None, bytes]]: ...
    @property
    def by_partition(self) -> Mapping[int, Sequence[tuple[bytes, bytes | None]]]: ...
    @property
    def failpoint(self) -> str: ...


class Transactions:
    """Transactional producers by unit; :meth:`commit` writes one batch atomically.

    >>> txns = Transactions(Settings.from_env({}), group_id="pulse")  # doctest: +SKIP
    >>> await txns.open(["events-0"])                                  # doctest: +SKIP
    >>> offsets = {TopicPartition("pulse.events", 0): 42}             # doctest: +SKIP
    >>> await txns.commit("events-0", sends, offsets)                  # doctest: +SKIP
    """

    def __init__(
        self,
        settings: Settings,
        group_id: str,
        timeout_s: float = 15.0,
        on_fenced: Callable[[UnitFenced], None] | None = None,
    ) -> None:
        self.settings = settings
        self.group_id = group_id
        self.timeout_s = timeout_s
        self.on_fenced = on_fenced or _stop_this_process
        #: set once a producer of this worker was fenced: nothing more is committed
        self.fenced: UnitFenced | None = None
        self._producers: dict[str, AIOKafkaProducer] = {}
        self._opening: dict[str, asyncio.Task[AIOKafkaProducer]] = {}
        #: the offsets each commit made, per source partition (for lag and progress);
        #: a unit's are forgotten when it is closed (its new owner commits them)
        self.committed: dict[TopicPartition, int] = {}
        self._committed_by: dict[str, set[TopicPartition]] = {}
        self.commits = 0
        self.retries = 0

    def transactional_id(self, unit: str) -> str:
        return f"{self.settings.app_id}-{unit}"

    async def _new_producer(self, unit: str) -> AIOKafkaProducer:
        s = self.settings
        producer = AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap,
            transactional_id=self.transactional_id(unit),
            transaction_timeout_ms=60_000,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=256 * 1024,
            max_request_size=CHECKPOINT_MAX_BYTES,  # a recommender checkpoint can be large
            request_timeout_ms=int(self.timeout_s * 1000),
            # the first write to a partition in a transaction is verified by the
            # broker and often answered NOT_ENOUGH_REPLICAS once: retry soon
            retry_backoff_ms=10,
            client_id=f"{s.app_id}-{unit}",
            **s.kafka_client_kwargs(),
        )
        try:  # start() initialises the transactional id: an open transaction of it is aborted
            await asyncio.wait_for(producer.start(), self.timeout_s)
        except BaseException:
            await producer.stop()
            raise
        return producer

    async def _producer(self, unit: str) -> AIOKafkaProducer:
        producer = self._producers.get(unit)
        if producer is not None:
            return producer
        task = self._opening.get(unit)
        if task is None:
            task = self._opening[unit] = asyncio.ensure_future(self._new_producer(unit))
        try:
            producer = await asyncio.shield(task)
        finally:
            if task.done():
                self._opening.pop(unit, None)
        self._producers[unit] = producer
        return producer

    async def open(self, units: Iterable[str]) -> None:
        """Initialise the producers of ``units`` now (on assignment).

        That aborts what a crashed owner left open, so ``read_committed``
        readers (the merger, restores) are not held back by it until the
        transaction timeout.
        """
        results = await asyncio.gather(*(self._producer(u) for u in units), return_exceptions=True)
        for unit, result in zip(units, results, strict=False):
            if isinstance(result, BaseException):
                log.warning("transactional producer for %s not ready yet: %r", unit, result)

    async def close(self, units: Iterable[str]) -> None:
        """Stop the producers of units this worker no longer owns."""
        for unit in list(units):
            for tp in self._committed_by.pop(unit, ()):
                self.committed.pop(tp, None)
            producer = self._producers.pop(unit, None)
            if producer is not None:
                await _stop(producer)

    async def stop(self) -> None:
        await self.close(list(self._producers))

    async def commit(
        self,
        unit: str,
        writes: Sequence[Write],
        offsets: Mapping[TopicPartition, int] | None = None,
        failpoint: str = "",
    ) -> None:
        """Write ``writes`` and commit ``offsets`` (next offset to read) in one transaction.

        Retries until Kafka commits (a broker outage aborts the attempt, and the
        same writes go again in a new transaction). Each write's failpoint is
        passed once it is in the open transaction, ``failpoint`` once every
        write is acknowledged and the offsets are in (just before the commit); when
        a write's failpoint is armed the write is acknowledged before it fires.
        Raises :class:`UnitFenced` when another producer took the unit over.
        """
        if self.fenced is not None:
            raise UnitFenced(f"not committed: {self.fenced}")
        if not any(writes) and not offsets:
            return
        delay = 0.2
        while True:
            producer = None
            try:
                producer = await self._producer(unit)
                await self._attempt(producer, writes, offsets, failpoint)
                break
            except _FENCED as exc:
                await self._drop(unit, producer)
                self.fenced = UnitFenced(
                    f"{unit}: another worker's producer took over ({exc!r}); this worker "
                    "commits nothing more and stops: it lost its partitions (a pause longer "
                    "than BROKER_SESSION_TIMEOUT?) and rejoins the group when restarted"
                )
                log.critical("%s", self.fenced)
                self.on_fenced(self.fenced)
                raise UnitFenced(str(self.fenced)) from exc
            except (errors.KafkaError, TimeoutError, OSError) as exc:
                self.retries += 1
                log.warning("transaction of %s failed, retrying in %.1fs: %r", unit, delay, exc)
                await self._abort(unit, producer)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self.commits += 1
        if offsets:
            self.committed.update(offsets)
            self._committed_by.setdefault(unit, set()).update(offsets)

    async def _attempt(
        self,
        producer: AIOKafkaProducer,
        writes: Sequence[Write],
        offsets: Mapping[TopicPartition, int] | None,
        failpoint: str,
    ) -> None:
        timeout = self.timeout_s
        await asyncio.wait_for(producer.begin_transaction(), timeout)
        futures: list[asyncio.Future[object]] = []
        for w in writes:
            if w.by_partition:
                futures += await send_batches(producer, w.topic, w.by_partition)
            for key, value in w.records:
                futures.append(await producer.send(w.topic, value=value, key=key))
            if w.failpoint:
                if w.failpoint in FAILPOINTS.armed:  # a crash test: the write is on the broker
                    await asyncio.wait_for(asyncio.gather(*futures), timeout)
                FAILPOINTS.reached(w.failpoint)
        if offsets:
            await asyncio.wait_for(
                producer.send_offsets_to_transaction(dict(offsets), self.group_id), timeout
            )
        if futures:
            await asyncio.wait_for(asyncio.gather(*futures), timeout)
        if failpoint:
            FAILPOINTS.reached(failpoint)
        await asyncio.wait_for(producer.commit_transaction(), timeout)

    async def _abort(self, unit: str, producer: AIOKafkaProducer | None) -> None:
        """Abort the failed attempt; a producer that cannot is replaced (re-init aborts)."""
        if producer is None:
            return
        try:
            await asyncio.wait_for(producer.abort_transaction(), self.timeout_s)
        except Exception as exc:  # any failure: start over with a new producer
            log.info("could not abort the transaction of %s (%r): new producer", unit, exc)
            await self._drop(unit, producer)

    async def _drop(self, unit: str, producer: AIOKafkaProducer | None) -> None:
        if producer is not None and self._producers.get(unit) is producer:
            del self._producers[unit]
        if producer is not None:
            await _stop(producer)


def _stop_this_process(_: UnitFenced) -> None:
    os.kill(os.getpid(), signal.SIGTERM)  # Faust's clean stop: leaves the group, exits


async def _stop(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), 30)
    except Exception as exc:  # its transaction times out on the broker
        log.debug("stopping a transactional producer: %r", exc)
