"""Send simulated traffic (:mod:`stream.core.simulator`) live to Kafka or the HTTP collector.

Batches are paced in real time: simulated time 0 is "now", so event times are live
and a 60 s simulation takes 60 s. Kafka sends wait for ``acks=all``; HTTP sends keep
several requests in flight, honour ``Retry-After`` on 429/503 and count statuses.

>>> import asyncio
>>> from stream.config import Settings
>>> from stream.core.simulator import SimConfig
>>> cfg = SimConfig(rate=500, duration_s=30, scenario="ctr-drop")
>>> summary = asyncio.run(run_simulation(Settings.from_env(), cfg))  # doctest: +SKIP
>>> summary["sent"], summary["achieved_rate"], summary["lagging"]  # doctest: +SKIP
(15012, 500.1, False)
"""

from __future__ import annotations

import asyncio
import email.utils
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import httpx
import orjson
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from stream.config import Settings
from stream.core.errors import PulseError
from stream.core.simulator import SimConfig, SimItem, Simulator
from stream.kafka.writer import EventWriter

MAX_ITEMS_PER_REQUEST = 500
MAX_BODY_BYTES = 500_000  # the collector accepts 512 KB; keep a margin
MAX_EVENT_BYTES = 32 * 1024
LAG_TOLERANCE_S = 1.0


class SimulationError(PulseError, RuntimeError):
    """The simulation could not deliver its traffic (e.g. collector unreachable)."""


@dataclass
class _Stats:
    sent: int = 0
    failed: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    http_status: Counter[str] = field(default_factory=Counter)
    accepted: int = 0
    rejected: int = 0
    retries: int = 0
    responses: int = 0

    def delivered(self, items: list[SimItem]) -> None:
        self.sent += len(items)
        for item in items:
            self.by_kind[item.kind] += 1


class _Sender(Protocol):
    async def start(self) -> None: ...
    async def submit(self, items: list[SimItem]) -> None: ...
    async def drain(self) -> None: ...
    async def close(self) -> None: ...


class _KafkaSender:
    """One acknowledged ``send_many`` per batch, in order (keeps per-key order)."""

    def __init__(self, settings: Settings, stats: _Stats, on_sent: Callable[[int], None]) -> None:
        self.writer = EventWriter(settings)
        self.topic = settings.topic("events")
        self.stats = stats
        self.on_sent = on_sent

    async def start(self) -> None:
        await self.writer.start()

    async def submit(self, items: list[SimItem]) -> None:
        await self.writer.send_many([(i.key, i.value) for i in items], topic=self.topic)
        self.stats.delivered(items)
        self.on_sent(len(items))

    async def drain(self) -> None:
        return None

    async def close(self) -> None:
        await self.writer.stop()


def http_bodies(items: list[SimItem]) -> Iterator[tuple[bytes, list[SimItem]]]:
    """Group items into request bodies: JSON arrays of ≤ 500 items and ≤ 500 KB.

    Items that cannot ride inside an array (not JSON at all) or that are too large
    go alone, as the whole request body.

    >>> ok = SimItem(b"u", b'{"a":1}', "valid", {"a": 1})
    >>> bad = SimItem(b"u", b"{oops", "malformed", None, "invalid_json")
    >>> [body for body, _ in http_bodies([ok, bad, ok])]
    [b'{oops', b'[{"a":1},{"a":1}]']
    """
    chunk: list[SimItem] = []
    size = 2
    for item in items:
        if not _fits_in_array(item):
            yield item.value, [item]
            continue
        if chunk and (
            len(chunk) >= MAX_ITEMS_PER_REQUEST or size + len(item.value) + 1 > MAX_BODY_BYTES
        ):
            yield b"[" + b",".join(i.value for i in chunk) + b"]", chunk
            chunk, size = [], 2
        chunk.append(item)
        size += len(item.value) + 1
    if chunk:
        yield b"[" + b",".join(i.value for i in chunk) + b"]", chunk


def _fits_in_array(item: SimItem) -> bool:
    if item.event is not None:
        return len(item.value) <= MAX_EVENT_BYTES
    if len(item.value) > MAX_EVENT_BYTES:
        return False
    try:
        orjson.loads(item.value)
    except orjson.JSONDecodeError:
        return False
    return True


def retry_after_s(value: str | None, default: float = 1.0, cap: float = 30.0) -> float:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date).

    >>> retry_after_s("2"), retry_after_s(None), retry_after_s("soon")
    (2.0, 1.0, 1.0)
    """
    if not value:
        return default
    try:
        return min(max(float(value), 0.0), cap)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    return min(max(when.timestamp() - time.time(), 0.0), cap)


class _HttpSender:
    """POST batches to ``{url}/v1/events`` with up to ``concurrency`` requests in flight."""

    max_throttle_retries = 30
    max_transport_retries = 5

    def __init__(
        self,
        url: str,
        write_key: str | None,
        concurrency: int,
        stats: _Stats,
        on_sent: Callable[[int], None],
    ) -> None:
        self.url = url.rstrip("/") + "/v1/events"
        self.headers = {"Content-Type": "application/json"}
        if write_key:
            self.headers["Authorization"] = f"Bearer {write_key}"
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, connect=5.0),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        self.slots = asyncio.Semaphore(concurrency)
        self.tasks: set[asyncio.Task[None]] = set()
        self.error: BaseException | None = None
        self.stats = stats
        self.on_sent = on_sent

    async def start(self) -> None:
        return None

    async def submit(self, items: list[SimItem]) -> None:
        for body, chunk in http_bodies(items):
            self._raise_if_failed()
            await self.slots.acquire()
            task = asyncio.create_task(self._post(body, chunk))
            self.tasks.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.slots.release()
        if not task.cancelled() and task.exception() is not None and self.error is None:
            self.error = task.exception()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    async def _post(self, body: bytes, chunk: list[SimItem]) -> None:
        stats = self.stats
        throttled = transport_errors = 0
        while True:
            try:
                resp = await self.client.post(self.url, content=body, headers=self.headers)
            except httpx.TransportError as exc:
                transport_errors += 1
                if stats.responses == 0 and transport_errors >= 3:
                    raise SimulationError(
                        f"cannot reach the Pulse collector at {self.url} ({exc!r}); "
                        "start a worker (`pulse worker`) or pass the right URL"
                    ) from exc
                if transport_errors > self.max_transport_retries:
                    stats.http_status["error"] += 1
                    stats.failed += len(chunk)
                    return
                await asyncio.sleep(min(0.25 * 2**transport_errors, 4.0))
                continue
            stats.responses += 1
            if resp.status_code in (429, 503) and throttled < self.max_throttle_retries:
                throttled += 1
                stats.retries += 1
                await asyncio.sleep(retry_after_s(resp.headers.get("Retry-After")))
                continue
            break
        stats.http_status[str(resp.status_code)] += 1
        if resp.status_code == 202:
            try:
                answer = resp.json()
                stats.accepted += int(answer.get("accepted", 0))
                stats.rejected += int(answer.get("rejected", 0))
            except (ValueError, AttributeError):
                pass
        if resp.status_code == 401:
            raise SimulationError(
                f"the collector at {self.url} refused the write key (401); pass the right "
                "write key or set PULSE_WRITE_KEYS to include it"
            )
        solo_malformed = len(chunk) == 1 and chunk[0].kind == "malformed"
        if resp.status_code == 202 or (resp.status_code == 400 and solo_malformed):
            stats.delivered(chunk)  # a lone non-JSON body is expected to get 400
            self.on_sent(len(chunk))
        else:
            stats.failed += len(chunk)

    async def drain(self) -> None:
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)
        self._raise_if_failed()

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)
        await self.client.aclose()


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        elapsed = task.finished_time or task.elapsed or 0.0
        speed = task.completed / elapsed if elapsed > 0 else 0.0  # average since start
        return Text(f"{speed:,.0f} ev/s", style="progress.data.speed")


async def write_sim_rates(settings: Settings) -> dict[str, float]:
    """Put the simulator's exchange rates on ``pulse.fx``, in force since the epoch."""
    from stream.core.fx import record
    from stream.core.simulator import sim_rates

    rates = sim_rates(settings.currency)
    async with EventWriter(settings) as writer:
        await writer.send_many([record(c, r, 0) for c, r in rates.items()], settings.topic("fx"))
    return rates


async def run_simulation(
    settings: Settings,
    cfg: SimConfig,
    via: str = "kafka",
    url: str | None = None,
    write_key: str | None = None,
    progress: bool = True,
    *,
    batch_ms: int = 100,
    concurrency: int = 8,
) -> dict[str, Any]:
    """Generate ``cfg``'s traffic live and send it ``via`` Kafka or HTTP; return a summary.

    ``url`` defaults to ``http://127.0.0.1:<PULSE_WEB_PORT>`` and ``write_key`` to the
    first of ``PULSE_WRITE_KEYS``. The summary says whether the sender fell behind
    the requested rate (``lagging``, ``max_lag_s``, ``note``).
    """
    if via not in ("kafka", "http"):
        raise ValueError(f"via={via!r} is not supported; use 'kafka' or 'http'")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    stats = _Stats()
    show = progress and sys.stdout.isatty()
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        disable=not show,
    )
    task_id = bar.add_task(f"simulate {cfg.scenario} via {via}", total=cfg.expected_items())

    def on_sent(n: int) -> None:
        bar.advance(task_id, n)

    sender: _Sender
    if via == "kafka":
        target = settings.topic("events")
        sender = _KafkaSender(settings, stats, on_sent)
    else:
        base = url or f"http://127.0.0.1:{settings.web_port}"
        target = base.rstrip("/") + "/v1/events"
        key = write_key if write_key is not None else next(iter(settings.write_keys), None)
        sender = _HttpSender(base, key, concurrency, stats, on_sent)

    loop = asyncio.get_running_loop()
    max_lag = 0.0
    sim: Simulator | None = None
    with bar:
        try:
            await sender.start()
            start_ms = int(time.time() * 1000)
            sim = Simulator(replace(cfg, start_ms=start_ms))
            wall0 = loop.time() - (time.time() * 1000 - start_ms) / 1000
            for batch in sim.batches(batch_ms):
                delay = wall0 + batch.at_ms / 1000 - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    max_lag = max(max_lag, -delay)
                if batch.items:
                    await sender.submit(batch.items)
            await sender.drain()
        finally:
            await sender.close()
        bar.update(task_id, total=stats.sent + stats.failed)
    elapsed = loop.time() - wall0
    assert sim is not None
    return _summary(cfg, sim, stats, via, target, elapsed, max_lag)


def _summary(
    cfg: SimConfig,
    sim: Simulator,
    stats: _Stats,
    via: str,
    target: str,
    elapsed: float,
    max_lag: float,
) -> dict[str, Any]:
    truth = sim.truth
    target_rate = truth.total / cfg.duration_s
    achieved = stats.sent / elapsed if elapsed > 0 else 0.0
    tail = max(0.0, elapsed - cfg.duration_s)
    lagging = max_lag > LAG_TOLERANCE_S or tail > max(LAG_TOLERANCE_S, 0.1 * cfg.duration_s)
    note = None
    if lagging:
        advice = (
            "lower the rate, send via kafka, or add workers"
            if via == "http"
            else "lower the rate or run several simulators (one core sends about 15-20k/s)"
        )
        note = (
            f"the sender fell behind: up to {max(max_lag, tail):.1f} s late, "
            f"{achieved:,.0f} of {target_rate:,.0f} events/s planned; {advice}"
        )
    if stats.failed:
        extra = f"{stats.failed} items were not delivered (see http_status)"
        note = f"{note}; {extra}" if note else extra
    summary: dict[str, Any] = {
        "via": via,
        "target": target,
        "scenario": cfg.scenario,
        "seed": cfg.seed,
        "start_ms": sim.cfg.start_ms,
        "designated_campaign": truth.designated_campaign,
        "rate": cfg.rate,
        "duration_s": cfg.duration_s,
        "planned": truth.total,
        "sent": stats.sent,
        "failed": stats.failed,
        "by_kind": dict(stats.by_kind),
        "elapsed_s": round(elapsed, 3),
        "target_rate": round(target_rate, 1),
        "achieved_rate": round(achieved, 1),
        "max_lag_s": round(max_lag, 3),
        "lagging": lagging,
        "note": note,
    }
    if via == "http":
        summary.update(
            http_status=dict(stats.http_status),
            accepted=stats.accepted,
            rejected=stats.rejected,
            retries=stats.retries,
        )
    return summary
