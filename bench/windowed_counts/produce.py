"""Writing records to the local broker: one fast producer, one batch per partition."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.windowed_counts.workload import Record
from stream.kafka.writer import send_batches


def fast_producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks=1,
        linger_ms=5,
        max_batch_size=1024 * 1024,
        max_request_size=16 * 1024 * 1024,
        client_id="bench-producer",
    )


async def send_partitioned(
    producer: AIOKafkaProducer, topic: str, records: list[Record]
) -> list[asyncio.Future[Any]]:
    """One producer batch per partition (``stream.kafka.writer.send_batches``); futures."""
    by_part: dict[int, list[tuple[bytes, bytes]]] = {}
    for p, k, v in records:
        by_part.setdefault(p, []).append((k, v))
    return await send_batches(producer, topic, by_part)


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if name not in set(await admin.list_topics()):
            await admin.create_topics(
                [NewTopic(name=name, num_partitions=partitions, replication_factor=1)]
            )
    finally:
        await admin.close()


async def prefill(bootstrap: str, topics: list[str], records: list[Record]) -> float:
    producer = fast_producer(bootstrap)
    await producer.start()
    chunk = 20_000
    t0 = time.monotonic()
    try:
        with Progress(
            TextColumn("prefill {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        ) as progress:
            for topic in topics:
                task = progress.add_task(topic, total=len(records))
                pending: list[asyncio.Future[Any]] = []
                for i in range(0, len(records), chunk):
                    part = records[i : i + chunk]
                    pending += await send_partitioned(producer, topic, part)
                    if len(pending) > 64:
                        await asyncio.gather(*pending)
                        pending = []
                    progress.update(task, advance=len(part))
                await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return len(records) * len(topics) / (time.monotonic() - t0)
