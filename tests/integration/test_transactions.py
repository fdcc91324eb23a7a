"""Kafka transactions on the real broker: a fenced worker commits nothing more (transactions.py).

Two :class:`Transactions` of one app stand for two workers: the second opens the
first one's unit, as the new owner of a partition does on assignment, which
fences the first one's producer. The first one's next commit must raise
:class:`UnitFenced` (not retry with a new producer, which would fence the new
owner in turn), ask its process to stop, and refuse every later commit; the
topic must hold, for a ``read_committed`` reader, the records of both owners'
commits and none of the fenced attempt.
"""

from __future__ import annotations

import asyncio

import pytest

from stream.config import Settings
from stream.kafka.topics import ensure_topics
from stream.kafka.transactions import Transactions, UnitFenced
from stream.runtime import Send
from tests.integration.helpers import consume_all

pytestmark = [pytest.mark.integration, pytest.mark.kafka4]


async def test_a_fenced_worker_commits_nothing_more_and_asks_to_stop(worker_env, kafka) -> None:
    settings = Settings.from_env(worker_env)
    await ensure_topics(settings)
    name = settings.topic("events.dlq")
    stops: list[UnitFenced] = []
    old = Transactions(settings, group_id=settings.app_id, on_fenced=stops.append)
    new = Transactions(settings, group_id=settings.app_id)
    try:
        await old.commit("events-0", [Send(name, [(b"k", b"before")])])
        await new.open(["events-0"])  # the partition's new owner
        with pytest.raises(UnitFenced, match="events-0: another worker's producer took over"):
            await asyncio.wait_for(old.commit("events-0", [Send(name, [(b"k", b"zombie")])]), 60)
        assert len(stops) == 1, "the fenced worker asked its process to stop"
        with pytest.raises(UnitFenced):  # and it commits nothing more, on any unit
            await old.commit("events-1", [Send(name, [(b"k", b"zombie 2")])])
        await new.commit("events-0", [Send(name, [(b"k", b"after")])])  # not fenced back
    finally:
        await old.stop()
        await new.stop()
    values = [v for _, v in await consume_all(kafka.bootstrap, name)]
    assert values == [b"before", b"after"]
