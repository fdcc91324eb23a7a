"""``pulse deliver``: POST every trigger to its webhook endpoints, signed, retried durably.

Decisions (config, matching, signing, outcomes, schedule) live in
:mod:`stream.core.delivery`, the vendor requests (Braze, Customer.io, Klaviyo)
and Braze batching in :mod:`stream.core.adapters`; this module moves records
between Kafka and HTTP. A try at an adapter endpoint is the vendor's request
instead of a signed webhook; a Braze trigger waits (at most the endpoint's
``linger``) in a batch of its campaign and takes the batch request's response
as its own, so everything below holds per trigger for adapters too.

Flow
----
One consumer group (``{PULSE_APP_ID}-deliver``, static membership so a restarted
process takes its partitions back at once) reads two topics ``read_committed``:

* ``pulse.triggers``: each trigger is tried once at every endpoint whose globs
  match its action, concurrently.
* ``pulse.triggers.retry``: records ``{trigger, endpoint, attempt, due_ms,
  last_status}``. A record is held in memory (a sleeping task) until ``due_ms``,
  then tried once at its endpoint.

Every try ends in exactly one of: delivered (2xx); a new retry record for the
next try, with its due time from the schedule (exponential steps, jitter,
``Retry-After``), written and acknowledged by Kafka; or a dead-letter record
on ``pulse.triggers.dlq`` (410, another final 4xx, or the last try failed),
acknowledged. A try never sleeps in place: waiting happens only for records of
the retry topic, in their own task, so a slow or dead endpoint holds neither
its partition nor other endpoints (each endpoint has its own bounded pool of
``concurrency`` requests in flight, and a circuit: after ``2 x concurrency``
failed tries in a row its tries fail at once for 5 s, so an endpoint that hangs
until the timeout costs no more than one that refuses connections).

Offsets
-------
A record is *finished* once every endpoint's try has ended as above. Per
partition, the committed offset is the lowest offset not yet finished (all
records before it are), committed every 0.5 s and when partitions are
revoked. So:

* kill -9 at any moment re-reads at most the unfinished records and those
  behind them: triggers are sent again (at least once; receivers dedupe on
  ``webhook-id``) and a retry or DLQ record may be written twice (replay
  dedupes the DLQ on trigger and endpoint);
* a retry record not yet due is not finished, so its offset — and with it the
  offsets after it on that retry partition — stays uncommitted: after a
  restart those records are read again and held until due; records behind it
  that were already handled are recognised as below. The retry topic therefore
  re-reads at most the records behind the oldest one still waiting; with the
  default schedule that is up to 10 h of retries, held as small sleeping
  tasks. Reading (of both topics) pauses while more than ``MAX_PENDING``
  records are unfinished.

Re-reading must not fork a chain of tries, nor repeat its end. Retry and DLQ
records are keyed ``trigger_id|endpoint``, so one partition holds a chain in
order, and a chain that ends after a retry (delivered or dead-lettered) gets an
end marker there (``"done": true``). While a chain's records are in hand the
highest attempt read is remembered: a retry record whose chain has a later
attempt or its end marker read is dropped when due, and a re-read trigger is
not tried again at an endpoint whose chain is in hand. After an assignment, the
retry records of a partition wait until it has been read to its end offset of
that moment, so the later records and markers are known before any try. Left
over after a crash: first tries whose offsets were not committed yet are sent
again, and a record written just before the kill may appear twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import socket
import time
from collections import Counter as Tally
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from stream.config import Settings
from stream.core.adapters import Batcher, HttpRequest, user_id
from stream.core.adapters import retry_after as vendor_retry_after
from stream.core.delivery import (
    ACTIONS,
    OUTCOMES,
    Circuit,
    Decision,
    DeliveryConfig,
    Endpoint,
    action_label,
    classify,
    counts_against_circuit,
    decide,
    dlq_record,
    latency_s,
    matches_glob,
    read_retry_record,
    retry_record,
    sign_headers,
)
from stream.core.privacy import erased_matcher
from stream.kafka.writer import EventWriter, until_written
from stream.tools.erase import erased_keys

log = logging.getLogger(__name__)

#: unfinished records (triggers and retries) above which reading pauses
MAX_PENDING = 20_000
COMMIT_INTERVAL_S = 0.5
#: ``latest`` of a chain whose end marker was read
CHAIN_DONE = 1 << 30
LATENCY_BUCKETS = (
    0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 7200, 18000, 36000, 86400,
)  # fmt: skip


def chain_key(trigger: dict[str, Any], url: str) -> str:
    """The Kafka key of a trigger's retry and DLQ records for one endpoint: one partition
    holds a chain's records in order."""
    return f"{trigger.get('trigger_id')}|{url}"


class DeliveryMetrics:
    """``pulse_deliveries_total``, ``pulse_delivery_latency_seconds``,
    ``pulse_delivery_attempts_total``; every action × outcome series exists from the start."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.deliveries = Counter(
            "pulse_deliveries",
            "Webhook deliveries by outcome (delivered, retried, dead_lettered)",
            ["action", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "pulse_delivery_latency_seconds",
            "Trigger created -> delivered to an endpoint",
            ["action"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.attempts = Counter(
            "pulse_delivery_attempts", "HTTP tries of webhook deliveries", ["action"], registry=r
        )
        for action in (*ACTIONS, "other"):
            for outcome in OUTCOMES:
                self.deliveries.labels(action, outcome)
            self.latency.labels(action)
            self.attempts.labels(action)

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class Response:
    status: int | None
    error: str = ""
    retry_after: str | None = None
    #: no request was made: the adapter cannot send this trigger (dead-lettered at once)
    invalid: bool = False

    @property
    def last_status(self) -> int | str:
        return self.status if self.status is not None else self.error


Waiter = tuple[dict[str, Any], "asyncio.Future[Response]"]


class Sender:
    """One HTTP client and one bounded pool of requests in flight per endpoint.

    A trigger's try is a signed webhook, or the vendor request its endpoint's adapter
    builds. Braze triggers wait in a batch (per Braze campaign, up to ``batch`` of them,
    at most ``linger`` long) and share its request's response; each then goes on with its
    own outcome (delivered, retry chain, DLQ) as if it had been sent alone.
    """

    def __init__(self, config: DeliveryConfig) -> None:
        self.config = config
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._circuits = {
            e.url: Circuit(threshold=2 * config.concurrency) for e in config.endpoints
        }
        for e in config.endpoints:
            limits = httpx.Limits(
                max_connections=config.concurrency, max_keepalive_connections=config.concurrency
            )
            self._clients[e.url] = httpx.AsyncClient(
                timeout=config.timeout_s, limits=limits, follow_redirects=False
            )
            self._slots[e.url] = asyncio.Semaphore(config.concurrency)
        self._batchers: dict[str, tuple[Endpoint, Batcher[Waiter], asyncio.Event]] = {}
        self._flushers: list[asyncio.Task[None]] = []
        self._batch_tasks: set[asyncio.Task[None]] = set()

    async def send(self, endpoint: Endpoint, trigger: dict[str, Any], body: bytes) -> Response:
        """One try of ``trigger`` at ``endpoint`` (``body``: the trigger's JSON, for webhooks)."""
        adapter = endpoint.adapter
        if adapter is None:
            return await self.post(endpoint, str(trigger.get("trigger_id") or ""), body)
        problem = adapter.check(trigger)
        if problem is not None:
            return Response(None, problem, invalid=True)
        if adapter.batches:
            return await self._batched(endpoint, trigger)
        return await self.request(endpoint, lambda: adapter.request([trigger]))

    async def post(self, endpoint: Endpoint, msg_id: str, body: bytes) -> Response:
        """One signed webhook POST (signed once a slot is free: a fresh timestamp)."""

        def build() -> HttpRequest:
            headers = sign_headers(endpoint, msg_id, body, time.time())
            return HttpRequest("POST", endpoint.url, headers, body)

        return await self.request(endpoint, build)

    async def request(self, endpoint: Endpoint, build: Callable[[], HttpRequest]) -> Response:
        """One request; fails at once while the endpoint's circuit is open (checked
        again once a slot is free, so a queue built while it hung drains quickly)."""
        circuit = self._circuits[endpoint.url]
        async with self._slots[endpoint.url]:
            if not circuit.allow(time.monotonic()):
                return Response(None, "circuit open: the endpoint kept failing, no request sent")
            response = await self._send(endpoint, build())
        circuit.record(not counts_against_circuit(response.status), time.monotonic())
        return response

    async def _send(self, endpoint: Endpoint, req: HttpRequest) -> Response:
        client = self._clients[endpoint.url]
        try:
            r = await client.request(req.method, req.url, content=req.body, headers=req.headers)
        except httpx.TimeoutException as exc:
            return Response(None, f"timeout: {type(exc).__name__}")
        except httpx.HTTPError as exc:
            return Response(None, f"network: {type(exc).__name__}: {exc}"[:300])
        except Exception as exc:  # e.g. a header the HTTP library refuses: retried, logged
            log.warning("POST to %s failed: %r", endpoint.url, exc)
            return Response(None, f"error: {type(exc).__name__}: {exc}"[:300])
        if endpoint.adapter is None:
            return Response(r.status_code, retry_after=r.headers.get("retry-after"))
        return Response(r.status_code, retry_after=vendor_retry_after(r.headers, time.time()))

    # --- Braze batches ---------------------------------------------------------------

    async def _batched(self, endpoint: Endpoint, trigger: dict[str, Any]) -> Response:
        adapter = endpoint.adapter
        assert adapter is not None
        loop = asyncio.get_running_loop()
        if endpoint.url not in self._batchers:
            batcher: Batcher[Waiter] = Batcher(adapter.batch_size, adapter.linger_s)
            self._batchers[endpoint.url] = (endpoint, batcher, asyncio.Event())
            self._flushers.append(loop.create_task(self._flusher(endpoint.url)))
        _, batcher, wake = self._batchers[endpoint.url]
        future: asyncio.Future[Response] = loop.create_future()
        key, user = adapter.batch_key(trigger), user_id(trigger)
        for batch in batcher.add(key, user, (trigger, future), time.monotonic()):
            self._spawn_batch(endpoint, batch)
        wake.set()
        return await future  # cancelled (a revoked partition): left out of the request

    async def _flusher(self, url: str) -> None:
        """Send each batch once its linger is over."""
        endpoint, batcher, wake = self._batchers[url]
        while True:
            due = batcher.next_due()
            wake.clear()
            timeout = None if due is None else max(0.0, due - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)
            for batch in batcher.due(time.monotonic()):
                self._spawn_batch(endpoint, batch)

    def _spawn_batch(self, endpoint: Endpoint, batch: list[Waiter]) -> None:
        task = asyncio.get_running_loop().create_task(self._send_batch(endpoint, batch))
        self._batch_tasks.add(task)
        task.add_done_callback(self._batch_tasks.discard)

    async def _send_batch(self, endpoint: Endpoint, batch: list[Waiter]) -> None:
        """One request for the batch's triggers still waiting; its response is each one's."""
        adapter = endpoint.adapter
        assert adapter is not None
        live = [(t, f) for t, f in batch if not f.done()]
        if not live:
            return
        try:
            response = await self.request(endpoint, lambda: adapter.request([t for t, _ in live]))
        except asyncio.CancelledError:
            for _, f in live:
                f.cancel()
            raise
        except Exception as exc:  # a bug: each trigger's task fails (the process stops)
            for _, f in live:
                if not f.done():
                    f.set_exception(exc)
            return
        for _, f in live:
            if not f.done():
                f.set_result(response)

    def flush(self) -> None:
        """Send every open batch now (on shutdown), without waiting for its linger."""
        for endpoint, batcher, _ in self._batchers.values():
            for batch in batcher.drain():
                self._spawn_batch(endpoint, batch)

    async def close(self) -> None:
        self.flush()
        if self._batch_tasks:
            await asyncio.wait(list(self._batch_tasks), timeout=self.config.timeout_s + 1)
        tasks = [*self._flushers, *self._batch_tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in self._clients.values():
            await client.aclose()


class OffsetTracker:
    """Per partition, the offsets read and not finished; commit below the lowest of them."""

    def __init__(self) -> None:
        self.pending: dict[TopicPartition, set[int]] = defaultdict(set)
        self.next: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}

    def add(self, tp: TopicPartition, offset: int) -> None:
        self.pending[tp].add(offset)
        self.next[tp] = max(self.next.get(tp, 0), offset + 1)

    def done(self, tp: TopicPartition, offset: int) -> None:
        if tp in self.pending:
            self.pending[tp].discard(offset)

    def drop(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self.pending.pop(tp, None)
            self.next.pop(tp, None)
            self.committed.pop(tp, None)

    @property
    def total(self) -> int:
        return sum(len(p) for p in self.pending.values())

    def to_commit(self, assigned: set[TopicPartition]) -> dict[TopicPartition, int]:
        out = {}
        for tp, nxt in self.next.items():
            if tp not in assigned:
                continue
            pending = self.pending.get(tp)
            safe = min(pending) if pending else nxt
            if safe > self.committed.get(tp, -1):
                out[tp] = safe
        return out


@dataclass
class Deliverer:
    settings: Settings
    config: DeliveryConfig
    metrics: DeliveryMetrics
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        s = self.settings
        self.triggers_topic = s.topic("triggers")
        self.retry_topic = s.topic("triggers.retry")
        self.dlq_topic = s.topic("triggers.dlq")
        self.tracker = OffsetTracker()
        #: chain key (trigger id | endpoint) -> the highest retry attempt read (CHAIN_DONE once
        #: its end marker is read), while records of the chain are in hand
        self.latest: dict[str, int] = {}
        self.in_hand: Tally[str] = Tally()
        #: retry tasks not yet due (cancelled at once on shutdown)
        self.waiting: set[asyncio.Task[Any] | None] = set()
        #: retry partitions being re-read after assignment: set once at their end offset then
        self.caught_up: dict[TopicPartition, asyncio.Event] = {}
        self.catch_up_to: dict[TopicPartition, int] = {}
        self.new_retry_partitions: set[TopicPartition] = set()
        self.tasks: dict[TopicPartition, set[asyncio.Task[None]]] = defaultdict(set)
        self.ready = False
        self.consumer: AIOKafkaConsumer | None = None
        self.writer = EventWriter(s)
        self.sender: Sender | None = None
        #: an unexpected error of a delivery task: the process stops (its offset is not
        #: committed, so the record is delivered again after a restart)
        self.failure: BaseException | None = None

    # --- one try -------------------------------------------------------------------

    async def _try(
        self, trigger: dict[str, Any], body: bytes, endpoint: Endpoint, attempt: int
    ) -> None:
        """One try (a webhook POST, or the adapter's request, Braze's in a batch), then
        delivered / durable retry record / DLQ record (acknowledged)."""
        assert self.sender is not None
        action = action_label(trigger.get("action"))
        msg_id = str(trigger.get("trigger_id") or "")
        response = await self.sender.send(endpoint, trigger, body)
        now_ms = int(time.time() * 1000)
        if response.invalid:  # an adapter cannot send it (e.g. no user): no request made
            d = Decision("dead_letter", reason="rejected")
        else:
            self.metrics.attempts.labels(action).inc()
            d = decide(
                response.status, response.error, attempt, self.config, now_ms, self.rng,
                response.retry_after,
            )  # fmt: skip
        if d.kind == "delivered":
            self.metrics.deliveries.labels(action, "delivered").inc()
            lat = latency_s(trigger, now_ms)
            if lat is not None:
                self.metrics.latency.labels(action).observe(lat)
            if attempt > 1:
                await self._chain_done(trigger, endpoint, attempt, response.last_status)
            return
        if d.kind == "retry":
            record = retry_record(
                trigger, endpoint.url, attempt + 1, d.due_ms, response.last_status
            )
            await self._write(self.retry_topic, chain_key(trigger, endpoint.url), record)
            self.metrics.deliveries.labels(action, "retried").inc()
            log.info(
                "%s to %s: try %d answered %s; next try in %.1fs",
                msg_id, endpoint.url, attempt, response.last_status, (d.due_ms - now_ms) / 1000,
            )  # fmt: skip
            return
        record = dlq_record(trigger, endpoint.url, d.reason, attempt, response.last_status, now_ms)
        await self._write(self.dlq_topic, chain_key(trigger, endpoint.url), record)
        self.metrics.deliveries.labels(action, "dead_lettered").inc()
        if attempt > 1:
            await self._chain_done(trigger, endpoint, attempt, response.last_status)
        log.warning(
            "%s to %s dead-lettered after %d tries (%s, last %s)",
            msg_id, endpoint.url, attempt, d.reason, response.last_status,
        )  # fmt: skip

    async def _chain_done(
        self, trigger: dict[str, Any], endpoint: Endpoint, attempt: int, last_status: Any
    ) -> None:
        """Mark a chain of retries finished on the retry topic, so that its records, re-read
        after a restart, are dropped instead of tried again."""
        marker = retry_record(
            {"trigger_id": trigger.get("trigger_id")}, endpoint.url, attempt, 0, last_status
        )
        marker["done"] = True
        await self._write(self.retry_topic, chain_key(trigger, endpoint.url), marker)

    async def _write(self, topic: str, key: str, record: dict[str, Any]) -> None:
        """Write and wait for Kafka's acknowledgement (retrying while Kafka is away)."""
        raw, value = key.encode(), orjson.dumps(record)
        await until_written(lambda: self.writer.send_many([(raw, value)], topic=topic), topic)

    # --- records -------------------------------------------------------------------

    async def _handle_trigger(self, value: bytes | None) -> None:
        try:
            trigger = orjson.loads(value) if value is not None else None
        except orjson.JSONDecodeError:
            trigger = None
        if (
            not isinstance(trigger, dict)
            or not isinstance(trigger.get("action"), str)
            or not isinstance(trigger.get("trigger_id"), str)
            or not trigger["trigger_id"]
        ):
            log.warning("skipping a record of %s that is not a trigger", self.triggers_topic)
            return
        assert value is not None
        endpoints = [  # a chain of retries already read for it: it carries on from there
            e for e in self.config.matching(trigger["action"])
            if chain_key(trigger, e.url) not in self.latest
        ]  # fmt: skip
        await asyncio.gather(*(self._try(trigger, value, e, 1) for e in endpoints))

    async def _handle_retry(self, record: dict[str, Any], key: str, tp: TopicPartition) -> None:
        trigger = record["trigger"]
        attempt = record["attempt"]
        try:
            endpoint = self.config.endpoint(record["endpoint"])
            if endpoint is None:
                now_ms = int(time.time() * 1000)
                dead = dlq_record(
                    trigger, record["endpoint"], "unknown_endpoint", attempt - 1,
                    record.get("last_status"), now_ms,
                )  # fmt: skip
                await self._write(self.dlq_topic, key, dead)
                action = action_label(trigger.get("action"))
                self.metrics.deliveries.labels(action, "dead_lettered").inc()
                return
            task = asyncio.current_task()
            self.waiting.add(task)
            try:
                wait_s = (record["due_ms"] - time.time() * 1000) / 1000
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                caught_up = self.caught_up.get(tp)
                if caught_up is not None:  # after a restart: read what follows it first
                    await caught_up.wait()
            finally:
                self.waiting.discard(task)
            if self.latest.get(key, 0) > attempt:
                return  # superseded: a later try of this chain, or its end, was read
            await self._try(trigger, orjson.dumps(trigger), endpoint, attempt)
        finally:
            self.in_hand[key] -= 1
            if self.in_hand[key] <= 0:
                del self.in_hand[key]
                self.latest.pop(key, None)

    def _spawn(self, tp: TopicPartition, offset: int, value: bytes | None) -> None:
        self.tracker.add(tp, offset)
        handler: Any
        if tp.topic == self.triggers_topic:
            handler = self._handle_trigger(value)
        else:
            try:
                record = read_retry_record(orjson.loads(value) if value is not None else None)
            except orjson.JSONDecodeError:
                record = None
            if record is None:
                log.warning("skipping a record of %s that is not a retry record", self.retry_topic)
                self.tracker.done(tp, offset)
                return
            key = chain_key(record["trigger"], record["endpoint"])
            if record.get("done"):  # the chain ended: drop its records still in hand
                if key in self.in_hand:
                    self.latest[key] = CHAIN_DONE
                self.tracker.done(tp, offset)
                return
            self.latest[key] = max(self.latest.get(key, 0), record["attempt"])
            self.in_hand[key] += 1
            handler = self._handle_retry(record, key, tp)
        task = asyncio.get_running_loop().create_task(handler)
        tasks = self.tasks[tp]
        tasks.add(task)

        def finished(t: asyncio.Task[None]) -> None:
            tasks.discard(t)
            if t.cancelled():
                return
            exc = t.exception()
            if exc is not None:  # a bug: stop, so the unfinished record is redelivered
                log.error("delivering %s@%d failed", tp, offset, exc_info=exc)
                self.failure = self.failure or exc
                return
            self.tracker.done(tp, offset)

        task.add_done_callback(finished)

    # --- the consumer --------------------------------------------------------------

    async def commit(self) -> None:
        consumer = self.consumer
        if consumer is None:
            return
        offsets = self.tracker.to_commit(set(consumer.assignment()))
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            log.warning("offset commit failed (rebalance?): %r", exc)
            return
        self.tracker.committed.update(offsets)

    def listener(self) -> ConsumerRebalanceListener:
        deliverer = self

        class Listener(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
                # retries not yet due are dropped (the new owner re-reads them); tries in
                # flight may end for a few seconds, so that they are not sent twice
                tasks = [t for tp in revoked for t in deliverer.tasks.get(tp, ())]
                for task in tasks:
                    if task in deliverer.waiting:
                        task.cancel()
                busy = [t for t in tasks if not t.done()]
                if busy:
                    await asyncio.wait(busy, timeout=min(deliverer.config.timeout_s, 5.0))
                await deliverer.commit()
                for tp in revoked:
                    for task in deliverer.tasks.pop(tp, set()):
                        task.cancel()  # the new owner re-reads from the committed offset
                deliverer.tracker.drop(revoked)
                for tp in revoked:
                    deliverer.caught_up.pop(tp, None)
                    deliverer.catch_up_to.pop(tp, None)
                    deliverer.new_retry_partitions.discard(tp)

            async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
                for tp in assigned:
                    if tp.topic == deliverer.retry_topic and tp not in deliverer.caught_up:
                        deliverer.caught_up[tp] = asyncio.Event()
                        deliverer.new_retry_partitions.add(tp)
                deliverer.ready = True
                log.info(
                    "deliver: assigned %s", sorted(f"{t.topic}:{t.partition}" for t in assigned)
                )

        return Listener()

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        instance = s.worker_id or socket.gethostname()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap,
            group_id=f"{s.app_id}-deliver",
            group_instance_id=f"{s.app_id}-deliver-{instance}-{s.deliver_port}",
            client_id=f"{s.app_id}-deliver",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            # a static member does not leave on stop: its partitions move to the others
            # after this timeout (a restart with the same id takes them back at once)
            session_timeout_ms=10_000,
            **s.kafka_client_kwargs(),
        )
        self.sender = Sender(self.config)
        await self.writer.start()
        await self.consumer.start()
        self.consumer.subscribe([self.triggers_topic, self.retry_topic], listener=self.listener())
        last_commit = time.monotonic()
        try:
            while not stop.is_set():
                if self.failure is not None:
                    raise RuntimeError("a delivery task failed (see the log)") from self.failure
                if self.tracker.total >= MAX_PENDING:
                    await asyncio.sleep(0.1)
                else:
                    batches = await self.consumer.getmany(timeout_ms=200, max_records=1000)
                    for tp, messages in batches.items():
                        for m in messages:
                            self._spawn(tp, m.offset, m.value)
                    await self._catch_up()
                if time.monotonic() - last_commit >= COMMIT_INTERVAL_S:
                    await self.commit()
                    last_commit = time.monotonic()
        finally:
            await self._drain()
            await self.consumer.stop()
            await self.writer.stop()
            await self.sender.close()

    async def _catch_up(self) -> None:
        """Release the retry records of a partition once it is read to its end offset at
        assignment: a chain's later record or end marker is then in hand before any try."""
        assert self.consumer is not None
        if self.new_retry_partitions:
            tps = sorted(self.new_retry_partitions, key=lambda t: t.partition)
            self.new_retry_partitions.clear()
            try:
                self.catch_up_to.update(await self.consumer.end_offsets(tps))
            except KafkaError as exc:
                log.warning("end offsets of %s: %r; retrying", tps, exc)
                self.new_retry_partitions.update(tps)
                return
        for tp, end in list(self.catch_up_to.items()):
            try:
                position = await self.consumer.position(tp)
            except (KafkaError, AssertionError, ValueError):
                continue  # not assigned any more, or no position yet
            if position >= end:
                del self.catch_up_to[tp]
                event = self.caught_up.get(tp)
                if event is not None:
                    event.set()

    async def _drain(self, timeout_s: float = 10.0) -> None:
        """On shutdown: let tries in flight end (waiting retries are cancelled, open Braze
        batches sent at once), commit."""
        if self.sender is not None:
            self.sender.flush()
        for task in list(self.waiting):
            if task is not None:
                task.cancel()
        waiting = [t for tasks in self.tasks.values() for t in tasks if not t.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=timeout_s)
        for t in waiting:
            t.cancel()
        with contextlib.suppress(Exception):
            await self.commit()


async def serve_metrics(
    metrics: DeliveryMetrics, host: str, port: int, ready: Any = lambda: True
) -> Any:
    """``/metrics``, ``/healthz`` and ``/readyz`` (200 once partitions are assigned)."""
    from aiohttp import web

    async def metrics_view(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(_: web.Request) -> web.Response:
        ok = bool(ready())
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def run_deliver(settings: Settings, config: DeliveryConfig) -> None:
    """Run until SIGTERM / SIGINT."""
    from stream.cli.common import ensure_topics_with_retry

    await ensure_topics_with_retry(settings)
    metrics = DeliveryMetrics()
    deliverer = Deliverer(settings, config, metrics)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = await serve_metrics(
        metrics, settings.web_host, settings.deliver_port, lambda: deliverer.ready
    )
    log.warning(
        "pulse deliver: %d endpoints, schedule %s, metrics on :%d",
        len(config.endpoints), ", ".join(f"{x:g}s" for x in config.schedule),
        settings.deliver_port,
    )  # fmt: skip
    try:
        await deliverer.run(stop)
    finally:
        await runner.cleanup()


# --- replay --------------------------------------------------------------------------


@dataclass
class ReplaySummary:
    read: int = 0
    matched: int = 0
    delivered: int = 0
    failed: int = 0
    no_endpoint: int = 0
    erased: int = 0  # skipped: the trigger's user was erased (`pulse erase`)
    failures: list[str] = field(default_factory=list)


async def replay_dlq(
    settings: Settings,
    config: DeliveryConfig,
    action_glob: str | None = None,
    tries: int = 3,
) -> ReplaySummary:
    """Send each dead-lettered (trigger, endpoint) once more, from the DLQ's start to its end.

    Repeats on the DLQ (a crash may write one twice) are sent once. A retryable
    failure is tried again up to ``tries`` times within seconds; what still fails
    stays on the DLQ (nothing is removed from it) and is listed. A trigger of a
    user erased since (a request on ``pulse.erasures``) is not sent.
    """
    from stream.kafka.reading import read_records

    summary = ReplaySummary()
    rows = await read_records(
        settings, settings.topic("triggers.dlq"), client="deliver-replay",
        hint="and check PULSE_TOPIC_PREFIX",
    )  # fmt: skip
    erased = erased_matcher(
        await erased_keys(settings), settings.pseudonymize_salt, settings.app_id
    )
    todo: dict[tuple[str, str], tuple[dict[str, Any], Endpoint]] = {}
    for *_, raw in rows:
        summary.read += 1
        try:
            rec = orjson.loads(raw) if raw is not None else None
        except orjson.JSONDecodeError:
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("trigger"), dict):
            continue
        trigger = rec["trigger"]
        if not matches_glob(trigger, action_glob):
            continue
        endpoint = config.endpoint(str(rec.get("endpoint")))
        if endpoint is None:
            summary.no_endpoint += 1
            continue
        target = trigger.get("target")
        user = target.get("user_id") if isinstance(target, dict) else None
        if isinstance(user, str) and erased(user):
            summary.erased += 1
            continue
        todo[(str(trigger.get("trigger_id")), endpoint.url)] = (trigger, endpoint)
    summary.matched = len(todo)
    sender = Sender(config)

    async def one(trigger: dict[str, Any], endpoint: Endpoint) -> None:
        body = orjson.dumps(trigger)
        msg_id = str(trigger.get("trigger_id"))
        response = Response(None)
        for n in range(tries):
            response = await sender.send(endpoint, trigger, body)
            if response.invalid or classify(response.status) != "retry":
                break
            await asyncio.sleep(min(2.0**n, 5.0))
        if classify(response.status) == "delivered":
            summary.delivered += 1
        else:
            summary.failed += 1
            summary.failures.append(f"{msg_id} -> {endpoint.url}: {response.last_status}")

    try:
        await asyncio.gather(*(one(t, e) for t, e in todo.values()))
    finally:
        await sender.close()
    return summary
