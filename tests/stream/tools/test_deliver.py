"""The glue of ``pulse deliver`` that needs no broker: offset tracking and the metrics."""

from __future__ import annotations

from aiokafka import TopicPartition

from stream.core.delivery import ACTIONS
from stream.tools.deliver import DeliveryMetrics, OffsetTracker, chain_key

TP = TopicPartition("pulse.triggers", 0)
RETRY = TopicPartition("pulse.triggers.retry", 1)


def test_commit_stops_below_the_lowest_unfinished_offset() -> None:
    t = OffsetTracker()
    for offset in (10, 11, 12, 13):
        t.add(TP, offset)
    assert t.to_commit({TP}) == {TP: 10}  # nothing finished: the first unread-as-done
    t.done(TP, 11)
    t.done(TP, 13)
    assert t.to_commit({TP}) == {TP: 10}  # 10 still in flight holds the partition
    t.done(TP, 10)
    assert t.to_commit({TP}) == {TP: 12}
    t.committed[TP] = 12
    assert t.to_commit({TP}) == {}  # nothing new
    t.done(TP, 12)
    assert t.to_commit({TP}) == {TP: 14} and t.total == 0


def test_only_assigned_partitions_are_committed_and_drop_forgets() -> None:
    t = OffsetTracker()
    t.add(TP, 0)
    t.add(RETRY, 5)
    t.done(TP, 0)
    assert t.to_commit({TP}) == {TP: 1}
    t.drop([RETRY])
    t.done(RETRY, 5)  # a late finish of a revoked partition changes nothing
    assert t.to_commit({TP, RETRY}) == {TP: 1} and t.total == 0


def test_metrics_have_every_bounded_series_from_the_start() -> None:
    m = DeliveryMetrics()
    text = m.render().decode()
    for action in ACTIONS:
        for outcome in ("delivered", "retried", "dead_lettered"):
            assert f'pulse_deliveries_total{{action="{action}",outcome="{outcome}"}} 0.0' in text
        assert f'pulse_delivery_attempts_total{{action="{action}"}} 0.0' in text
    assert 'pulse_delivery_latency_seconds_bucket{action="other",le="36000.0"} 0.0' in text


def test_chain_key() -> None:
    assert chain_key({"trigger_id": "t1"}, "https://x/h") == "t1|https://x/h"


async def test_a_hanging_endpoint_opens_its_circuit_and_stops_costing_time() -> None:
    """An endpoint that accepts connections and never answers: after 2 x concurrency
    timeouts the remaining tries fail at once, without a request (no broker needed)."""
    import asyncio
    import time

    from aiohttp import web

    from stream.core.delivery import parse_config
    from stream.tools.broker import free_port
    from stream.tools.deliver import Sender

    hits = 0

    async def hang(_: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        await asyncio.sleep(30)
        return web.Response()

    app = web.Application()
    app.router.add_post("/h", hang)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    key = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    config = parse_config(
        {
            "endpoints": [{"url": f"http://127.0.0.1:{port}/h", "actions": ["*"], "secret": key}],
            "concurrency": 2,
            "timeout": "0.3s",
        }
    )
    sender = Sender(config)
    try:
        t0 = time.monotonic()
        answers = await asyncio.gather(
            *(sender.post(config.endpoints[0], f"t{i}", b"{}") for i in range(40))
        )
        elapsed = time.monotonic() - t0
    finally:
        await sender.close()
        await runner.cleanup()
    errors = [a.error.split(":")[0] for a in answers]
    assert errors.count("timeout") == 4 and errors.count("circuit open") == 36, errors
    assert hits == 4 and elapsed < 1.5, (hits, elapsed)  # 40 x 0.3 s / 2 = 6 s without it


async def test_records_that_are_not_triggers_are_skipped() -> None:
    """Skipped before any I/O: the deliverer here has no HTTP sender and no Kafka writer."""
    from stream.config import Settings
    from stream.core.delivery import parse_config
    from stream.tools.deliver import Deliverer

    config = parse_config(
        {
            "endpoints": [
                {"url": "http://127.0.0.1:9/h", "actions": ["*"],
                 "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}
            ]
        }
    )  # fmt: skip
    d = Deliverer(Settings.from_env({}), config, DeliveryMetrics())
    for value in (None, b"not json", b"[1]", b'{"action": "campaign.pause"}',
                  b'{"action": "campaign.pause", "trigger_id": ""}'):  # fmt: skip
        await d._handle_trigger(value)  # would fail on the missing sender if it tried
