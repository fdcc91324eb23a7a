"""Erase requests on ``pulse.erasures``: forget a user's state, durably (``pulse erase``).

The topic is co-partitioned with ``pulse.events``, so a request reaches the
worker that owns the user's partition. Under the runtime lock the worker drops
the user's last click (a tombstone in the ``clicks`` changelog), their model
state (a fresh checkpoint in the ``models`` changelog) and cached segment,
then writes an acknowledgement (same key, same partition) that ``pulse erase``
waits for. Only then is the request's offset acknowledged, so a crash repeats
the erasure rather than losing it, and a restarted worker restores state
without the user.

>>> from stream.config import Settings
>>> agent = EraseAgent(Runtime.offline(Settings.from_env({})))
>>> agent.handle(b'"u1"', b"not an erase request", 3, 9)
([], None)
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust
import orjson
from prometheus_client import Counter

from stream.core.privacy import erased_ids, read_erase_record, salt_check
from stream.kafka.faust_internals import ack_all, message_batches, message_topic
from stream.runtime import ByPartition, Runtime, Send

log = logging.getLogger(__name__)


class EraseAgent:
    """Apply erase requests from ``pulse.erasures`` and acknowledge each on the same topic."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.topic = rt.settings.topic("erasures")
        self.erasures = Counter(
            "pulse_erasures",
            "User erase requests applied",
            ["status"],
            registry=rt.metrics.registry,
        )
        self.own_check = salt_check(rt.settings.pseudonymize_salt)

    def erase_key(self, key: str) -> tuple[dict[str, list[int]], list[Send]]:
        """Erase the user an erase request's key names (``stream.core.privacy.erase_key``).

        With a salt the key is the pseudonym held; without one, the held ids
        are hashed to find it (an erasure is rare; the ids are a set scan).
        """
        s = self.rt.settings
        if s.pseudonymize_salt:
            return self.erase(key)
        found = erased_ids([key], self.rt.stage.user_ids(), "", s.app_id)
        held: dict[str, list[int]] = {"clicks": [], "models": [], "recommenders": []}
        sends: list[Send] = []
        for user in found:
            got, more = self.erase(user)
            held = {k: sorted({*held[k], *got[k]}) for k in held}
            sends.extend(more)
        return held, sends

    def erase(self, user: str) -> tuple[dict[str, list[int]], list[Send]]:
        """Drop the user everywhere this worker holds state; the writes that make it durable."""
        rt = self.rt
        stage = rt.stage
        held = stage.erase_user(user)
        clicks_store = rt.stores["clicks"]
        stored = clicks_store.get(user)
        parts = set(held["clicks"])
        if stored is not None:
            parts.add(int(stored[4]))
        key = orjson.dumps(user)
        tombstones: ByPartition = {p: [(key, None)] for p in sorted(parts)}
        for p in parts:
            clicks_store.remove(p, user)
        models: ByPartition = {}
        models_store = rt.stores["models"]
        for p in held["models"]:
            blob = rt.model_blob(stage.models[p])
            models[p] = [(orjson.dumps(str(p)), orjson.dumps(blob))]
            models_store.put(p, str(p), blob)
        recos: ByPartition = {}
        for p in held["recommenders"]:  # sessions gone, contributions taken back
            blob = rt.model_blob(stage.recommenders[p])
            recos[p] = [(orjson.dumps(str(p)), orjson.dumps(blob))]
            rt.stores["recommenders"].put(p, str(p), blob)
        identities: ByPartition = {
            p: [(key, None)] for p, book in stage.identities.items() if book.erase(user)
        }
        sends = [
            Send(rt.changelogs["clicks"], by_partition=tombstones),
            Send(rt.changelogs["models"], by_partition=models),
            Send(rt.changelogs["identities"], by_partition=identities),
            Send(rt.changelogs["recommenders"], by_partition=recos),
        ]
        return {**held, "clicks": sorted(parts)}, sends

    def handle(
        self, key: bytes | None, value: bytes | None, partition: int, offset: int
    ) -> tuple[list[Send], str | None]:
        """The writes for one record of ``pulse.erasures`` (the erasure, then its ack), and
        the request's status (None: not a request)."""
        found = read_erase_record(key, value)
        where = f"{self.topic}[{partition}]@{offset}"
        if found is None:
            log.warning(
                "ignoring an unreadable record at %s: erase requests are written by "
                "`pulse erase --user ID`",
                where,
            )
            return [], None
        user, request = found
        if "status" in request:  # our own acknowledgement
            return [], None
        ack: dict[str, Any] = {"request_id": request["request_id"]}
        sends: list[Send] = []
        if request.get("salt_check", "") != self.own_check:
            ack["status"] = "salt_mismatch"
            log.error(
                "erase request %s at %s was made with a different PULSE_PSEUDONYMIZE_SALT "
                "than this worker's; nothing was erased: run `pulse erase` with the workers' "
                "salt",
                request["request_id"],
                where,
            )
        else:
            held, sends = self.erase_key(user)
            ack.update(status="applied", **held)
            log.info(
                "erase request %s applied: last click removed on partitions %s, model "
                "state on partitions %s",
                request["request_id"],
                ack["clicks"],
                ack["models"],
            )
        ack["applied_at"] = int(time.time() * 1000)
        sends.append(Send(self.topic, by_partition={partition: [(key or b"", orjson.dumps(ack))]}))
        return sends, ack["status"]

    def count(self, status: str | None) -> None:
        if status is not None:
            self.erasures.labels(status).inc()

    # -- Faust wiring --------------------------------------------------------------------

    def attach(self, app: faust.App) -> None:
        rt = self.rt
        topic = message_topic(app, self.topic, rt.settings.partitions)

        @app.task
        async def apply_erasures() -> None:
            async for messages in message_batches(topic, 100):
                while not rt.recovered:  # state must be restored before it can be erased
                    await asyncio.sleep(0.2)
                done = []
                async with rt.lock:
                    for m in messages:
                        try:
                            sends, status = self.handle(m.key, m.value, m.partition, m.offset)
                            await rt.deliver(sends)
                            self.count(status)
                        except Exception as exc:  # never stop the worker; never log the user id
                            log.error(
                                "erase request at %s[%d]@%d failed (%s); it is retried when the "
                                "worker restarts",
                                self.topic,
                                m.partition,
                                m.offset,
                                type(exc).__name__,
                            )
                            continue  # not acknowledged: the committed offset stays before it
                        done.append(m)
                ack_all(app, done)
