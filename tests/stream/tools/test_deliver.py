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
