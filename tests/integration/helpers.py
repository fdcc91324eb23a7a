"""Produce and consume raw records on the test broker."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


def topic(env: dict[str, str], short: str) -> str:
    return env["PULSE_TOPIC_PREFIX"] + short


async def produce(
    bootstrap: str,
    name: str,
    records: list[tuple[bytes | None, bytes]],
    partition: int | None = None,
) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_request_size=16 * 1024 * 1024
    )
    await producer.start()
    try:
        futures = [
            await producer.send(name, key=k, value=v, partition=partition) for k, v in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def consume_all(
    bootstrap: str, name: str, expected: int | None = None, timeout_s: float = 30
) -> list[tuple[bytes | None, bytes]]:
    """Read a topic from the beginning until ``expected`` records or the topic's end."""
    consumer = AIOKafkaConsumer(
        name,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    out: list[tuple[bytes | None, bytes]] = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                out.extend((m.key, m.value) for m in msgs)
            if expected is not None and len(out) >= expected:
                break
            if expected is None and not batch:
                ends = await consumer.end_offsets(list(consumer.assignment()))
                positions = {tp: await consumer.position(tp) for tp in consumer.assignment()}
                if all(positions[tp] >= end for tp, end in ends.items()):
                    break
    finally:
        await consumer.stop()
    return out
