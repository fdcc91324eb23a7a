"""A narrow, acknowledged writer to Kafka used by the collector, simulator and replay.

Every send waits for ``acks=all``; callers learn of failures as exceptions, so
nothing is reported as written before Kafka has it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaProducer, errors

from stream.config import Settings
from stream.core.errors import PulseError

KeyValue = tuple[bytes | None, bytes]

log = logging.getLogger(__name__)


class KafkaUnavailable(PulseError, RuntimeError):
    """Kafka did not acknowledge a write in time."""


#: Errors after which an idempotent producer's sequence numbers are broken for good
#: (e.g. a batch expired in an outage left a gap): only a new producer id helps.
#: The Java client bumps its epoch for these; aiokafka 0.14 keeps failing.
_NEEDS_NEW_PRODUCER = (
    errors.OutOfOrderSequenceNumber,
    errors.UnknownProducerId,
    errors.InvalidProducerEpoch,
    errors.ProducerFenced,
)


async def until_written(send: Callable[[], Awaitable[int]], what: str = "write") -> None:
    """Retry ``send`` while Kafka cannot acknowledge (backoff up to 10 s).

    Agents use it so a batch is never acknowledged before its outputs are written.
    """
    delay = 0.5
    while True:
        try:
            await send()
            return
        except KafkaUnavailable as exc:
            log.warning("%s failed, retrying in %.1fs: %s", what, delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


class EventWriter:
    """Idempotent, ``acks=all`` producer with a batch send that awaits every ack.

    >>> writer = EventWriter(Settings.from_env({}))  # doctest: +SKIP
    >>> await writer.start(); await writer.send_many([(b"u1", b"{}")])  # doctest: +SKIP
    """

    def __init__(self, settings: Settings, *, request_timeout_ms: int = 15000) -> None:
        self.settings = settings
        self.default_topic = settings.topic("events")
        self.request_timeout_ms = request_timeout_ms
        self._producer: AIOKafkaProducer | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self.started = False
        self.resets = 0

    async def start(self) -> None:
        """Connect (the producer binds to the running event loop, so it is made here)."""
        self._producer = await self._new_producer()
        self.started = True

    async def _new_producer(self) -> AIOKafkaProducer:
        s = self.settings
        producer = AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=256 * 1024,
            request_timeout_ms=self.request_timeout_ms,
            client_id=f"{s.app_id}-writer",
            **s.kafka_client_kwargs(),
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        return producer

    async def stop(self) -> None:
        if self._producer is not None:
            self.started = False
            await self._producer.stop()
            self._producer = None
        if self._retiring:
            await asyncio.wait(self._retiring)

    async def _replace(self, broken: AIOKafkaProducer, reason: BaseException) -> None:
        """Swap in a new producer (new producer id) once; retire the broken one."""
        if self._producer is not broken:
            return  # a concurrent caller already replaced it
        log.warning("Kafka producer needs a new producer id (%r); reconnecting", reason)
        try:
            fresh = await self._new_producer()
        except Exception as exc:
            raise KafkaUnavailable(f"could not reconnect the Kafka producer: {exc!r}") from exc
        if self._producer is not broken:  # lost a race while connecting
            await fresh.stop()
            return
        self._producer = fresh
        self.resets += 1
        task = asyncio.get_running_loop().create_task(self._retire(broken))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    @staticmethod
    async def _retire(producer: AIOKafkaProducer) -> None:
        try:
            await asyncio.wait_for(producer.stop(), 30)
        except Exception as exc:  # its pending sends already failed to their callers
            log.debug("stopping the replaced producer: %r", exc)

    async def __aenter__(self) -> EventWriter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise KafkaUnavailable("the writer is not started")
        return self._producer

    async def _acknowledged(
        self, producer: AIOKafkaProducer, futures: list[Any], timeout_s: float | None = None
    ) -> None:
        """Wait for every ack; raise :class:`KafkaUnavailable` past the timeout.

        When ``producer`` can no longer write (broken idempotence sequence after
        an outage) it is replaced, so the caller's retry goes through.
        """
        if not futures:
            return
        timeout = timeout_s if timeout_s is not None else self.request_timeout_ms / 1000
        try:
            await asyncio.wait_for(asyncio.gather(*futures), timeout)
        except Exception as exc:  # KafkaError, TimeoutError
            if isinstance(exc, _NEEDS_NEW_PRODUCER):
                await self._replace(producer, exc)
            raise KafkaUnavailable(f"Kafka did not acknowledge the write: {exc!r}") from exc

    async def send_many(
        self,
        items: Iterable[KeyValue],
        topic: str | None = None,
        timestamp_ms: int | None = None,
        timeout_s: float | None = None,
    ) -> int:
        """Send every (key, value) and return once all are acknowledged.

        Raises :class:`KafkaUnavailable` when acknowledgements do not arrive
        within ``timeout_s`` (default: the producer request timeout).
        """
        stamped = ((key, value, timestamp_ms) for key, value in items)
        return await self.send_timestamped(stamped, topic, timeout_s)

    async def send_timestamped(
        self,
        items: Iterable[tuple[bytes | None, bytes, int | None]],
        topic: str | None = None,
        timeout_s: float | None = None,
    ) -> int:
        """Like :meth:`send_many` with a record timestamp (epoch ms) per item."""
        producer = self._started()
        name = topic or self.default_topic
        try:
            futures = [
                await producer.send(name, value=v, key=k, timestamp_ms=ts) for k, v, ts in items
            ]
        except (TimeoutError, errors.KafkaError) as exc:  # no metadata, buffer full
            raise KafkaUnavailable(f"Kafka did not take the write: {exc!r}") from exc
        await self._acknowledged(producer, futures, timeout_s)
        return len(futures)

    async def send_partitioned(
        self, topic: str, records: dict[int, list[tuple[bytes, bytes | None]]]
    ) -> int:
        """Append records to one producer batch per partition and await every ack.

        Much cheaper per record than :meth:`send_many` (no future per record);
        used for changelog writes whose partition is given by the source record.
        """
        producer = self._started()
        try:
            futures = await send_batches(producer, topic, records)
        except (TimeoutError, errors.KafkaError) as exc:
            raise KafkaUnavailable(f"Kafka did not take the write: {exc!r}") from exc
        await self._acknowledged(producer, futures)
        return sum(len(recs) for recs in records.values())


async def send_batches(
    producer: AIOKafkaProducer,
    topic: str,
    records: Mapping[int, Iterable[tuple[bytes | None, bytes | None]]],
) -> list[asyncio.Future[Any]]:
    """Append records to one producer batch per partition (more when full); return the futures.

    No future per record, unlike ``producer.send``; the caller awaits the acks.
    """
    futures = []
    for partition, recs in records.items():
        batch = producer.create_batch()
        for key, value in recs:
            if batch.append(key=key, value=value, timestamp=None) is None:
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        if batch.record_count():
            futures.append(await producer.send_batch(batch, topic, partition=partition))
    return futures
