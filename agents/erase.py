"""Erase requests on ``pulse.erasures``: forget a user's state, durably (``pulse erase``).

The topic is co-partitioned with ``pulse.events``, so a request reaches the
worker that owns the user's partition. Under the runtime lock the worker drops
the user's last click (a tombstone in the ``clicks`` changelog), their model
state (a fresh checkpoint in the ``models`` changelog) and cached segment,
then writes an acknowledgement (same key, same partition) that ``pulse erase``
waits for. Only then is the request's offset acknowledged, so a crash repeats
the erasure rather than losing it, and a restarted worker restores state
without the user.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import pickle
import time
from typing import Any

import faust
import orjson
from prometheus_client import Counter

from stream.app import Runtime
from stream.core.privacy import read_erase_record, salt_check
from stream.kafka.faust_internals import TableStore, ack_all, message_batches, message_topic
from stream.kafka.writer import until_written

log = logging.getLogger(__name__)


def register(app: faust.App, rt: Runtime) -> Any:
    s = rt.settings
    name = s.topic("erasures")
    topic = message_topic(app, name, s.partitions)
    changelogs = {t: rt.tables[t].changelog_topic.get_topic_name() for t in ("clicks", "models")}
    erasures = Counter(
        "pulse_erasures", "User erase requests applied", ["status"], registry=rt.metrics.registry
    )
    own_check = salt_check(s.pseudonymize_salt)

    async def write(topic_name: str, records: dict[int, list[tuple[bytes, bytes | None]]]) -> None:
        if records:
            await until_written(lambda: rt.writer.send_partitioned(topic_name, records))

    async def erase(user: str) -> dict[str, list[int]]:
        """Drop the user everywhere this worker holds state; make it durable."""
        stage = rt.stage
        held = stage.erase_user(user)
        clicks_table = TableStore(rt.tables["clicks"])
        stored = clicks_table.get(user)
        parts = set(held["clicks"])
        if stored is not None:
            parts.add(int(stored[4]))
        key = orjson.dumps(user)
        await write(changelogs["clicks"], {p: [(key, None)] for p in sorted(parts)})
        for p in parts:
            clicks_table.remove(p, user)
        models: dict[int, list[tuple[bytes, bytes | None]]] = {}
        models_table = TableStore(rt.tables["models"])
        for p in held["models"]:
            blob = base64.b64encode(pickle.dumps(stage.models[p])).decode()
            models[p] = [(orjson.dumps(str(p)), orjson.dumps(blob))]
            models_table.put(p, str(p), blob)
        await write(changelogs["models"], models)
        return {"clicks": sorted(parts), "models": held["models"]}

    async def handle(message: Any) -> None:
        found = read_erase_record(message.key, message.value)
        if found is None:
            log.warning(
                "ignoring an unreadable record at %s[%d]@%d: erase requests are written by "
                "`pulse erase --user ID`",
                name,
                message.partition,
                message.offset,
            )
            return
        user, request = found
        if "status" in request:  # our own acknowledgement
            return
        ack: dict[str, Any] = {"request_id": request["request_id"]}
        if request.get("salt_check", "") != own_check:
            ack["status"] = "salt_mismatch"
            log.error(
                "erase request %s at %s[%d]@%d was made with a different "
                "PULSE_PSEUDONYMIZE_SALT than this worker's; nothing was erased: run "
                "`pulse erase` with the workers' salt",
                request["request_id"],
                name,
                message.partition,
                message.offset,
            )
        else:
            ack.update(status="applied", **await erase(user))
            log.info(
                "erase request %s applied: last click removed on partitions %s, model "
                "state on partitions %s",
                request["request_id"],
                ack["clicks"],
                ack["models"],
            )
        ack["applied_at"] = int(time.time() * 1000)
        await write(name, {message.partition: [(message.key, orjson.dumps(ack))]})
        erasures.labels(ack["status"]).inc()

    @app.task
    async def apply_erasures() -> None:
        async for messages in message_batches(topic, 100):
            while not rt.recovered:  # state must be restored before it can be erased
                await asyncio.sleep(0.2)
            done = []
            async with rt.lock:
                for message in messages:
                    try:
                        await handle(message)
                    except Exception as exc:  # never stop the worker; never log the user id
                        log.error(
                            "erase request at %s[%d]@%d failed (%s); it is retried when the "
                            "worker restarts",
                            name,
                            message.partition,
                            message.offset,
                            type(exc).__name__,
                        )
                        continue  # not acknowledged: the committed offset stays before it
                    done.append(message)
            ack_all(app, done)

    return apply_erasures
