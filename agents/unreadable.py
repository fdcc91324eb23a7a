"""A table record that cannot be restored stops the restore, naming topic, partition, offset.

Faust restores the tables before the agents read them, so what fails to decode
or authenticate is known by table, partition and key; :meth:`Unreadable.located`
then finds the offset of that key's latest record in the changelog (read only on
this error path) for the message. :func:`stop_restore` then stops the worker.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from stream.config import Settings
from stream.core.sealing import StateRecordError
from stream.kafka.reading import read_records
from stream.telemetry import PulseMetrics

log = logging.getLogger(__name__)


class Unreadable(Exception):
    """The record of ``key`` in ``table`` (source partition ``partition``) did not load."""

    def __init__(self, table: str, partition: int, key: str, cause: BaseException) -> None:
        super().__init__(f"{table} partition {partition} key {key!r}: {cause}")
        self.table, self.partition, self.key, self.cause = table, partition, key, cause

    async def located(self, settings: Settings, topic: str) -> StateRecordError:
        """The user-facing error, with the offset of the key's latest record in ``topic``."""
        offset: int | str = "unknown"
        try:
            rows = await read_records(
                settings, topic, timeout_s=30, partitions={self.partition}, client="locate"
            )
        except Exception:  # the message matters more than the offset
            rows = []
        for _, at, _, key, _ in rows:
            if key is not None and orjson.loads(key) == self.key:
                offset = at
        return StateRecordError(
            f"{topic} partition {self.partition} offset {offset} (key {self.key!r}): the "
            f"{self.table} record cannot be restored ({self.cause}); it is not skipped, so "
            f"this worker stops: fix or delete the record (a tombstone for the key), or "
            f"delete the topic to start this state afresh"
        )


@contextmanager
def unreadable(table: str, partition: int, key: str) -> Iterator[None]:
    """Turn any error while loading one record into :class:`Unreadable`."""
    try:
        yield
    except Exception as exc:
        raise Unreadable(table, partition, key, exc) from exc


async def stop_restore(app: Any, err: BaseException, metrics: PulseMetrics, table: str) -> None:
    """Count the refused ``table`` record, log ``err`` at CRITICAL and crash ``app``.

    The worker process exits with an error
    (``pulse_state_records_refused_total{table}`` counts it first).

    Raising from a recovery callback would not do: Faust waits for those with
    ``asyncio.wait``, which keeps their exceptions, and the worker would stay up,
    never ready, with its partitions held.
    """
    metrics.state_refused.labels(table).inc()
    log.critical("%s", err)
    await app.crash(err)
