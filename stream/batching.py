"""Batch consumption on Faust without per-event Stream/Event objects.

Faust delivers every consumed record to its topic's channel queue as an Event,
and a Stream then awaits them one by one (a task per event). For the hot
ingestion path :class:`MessageTopic` keeps the raw consumer ``Message`` in
the queue and :func:`message_batches` drains it in bulk; offsets are committed
by Faust as usual once :func:`ack_all` acknowledges the messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

import faust


class MessageTopic(faust.Topic):
    """A topic whose queue holds raw consumer messages (bytes key and value)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.decode = self._keep_message  # type: ignore[method-assign]  # Faust compiles decode per instance

    async def _keep_message(self, message: Any, *, propagate: bool = False) -> Any:
        return message


def message_topic(app: faust.App, name: str, partitions: int) -> MessageTopic:
    topic = MessageTopic(
        app,
        topics=[name],
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
