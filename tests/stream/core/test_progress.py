"""When the wall clock may close a partition's windows: only once it is caught up."""

from __future__ import annotations

from typing import Any

from stream.core.progress import FRESH_MS, caught_up

NOW = 1_700_000_000_000


def progress(**overrides: Any) -> dict[str, Any]:
    base = {"highwater": 500, "polled_ms": NOW - 300, "position": 500, "committed": 450}
    return {**base, **overrides}


def test_everything_up_to_the_highwater_processed_is_caught_up() -> None:
    assert caught_up(**progress(), processed=499, now_ms=NOW)


def test_backlog_on_the_broker_or_in_the_queue_is_not_caught_up() -> None:
    assert not caught_up(**progress(), processed=300, now_ms=NOW)  # fetched, queued
    assert not caught_up(**progress(position=320), processed=300, now_ms=NOW)  # on the broker


def test_restart_before_any_record_uses_the_committed_offset() -> None:
    assert not caught_up(**progress(committed=450), processed=None, now_ms=NOW)
    assert caught_up(**progress(committed=500), processed=None, now_ms=NOW)


def test_stale_committed_offset_does_not_hide_processed_records() -> None:
    assert caught_up(**progress(committed=100), processed=499, now_ms=NOW)


def test_new_group_on_an_empty_or_expired_partition_is_caught_up_at_the_position() -> None:
    expired = progress(highwater=900, position=900, committed=None)
    assert caught_up(**expired, processed=None, now_ms=NOW)
    assert not caught_up(**progress(committed=None, position=0), processed=None, now_ms=NOW)


def test_unknown_or_stale_highwater_is_not_trusted() -> None:
    assert not caught_up(**progress(highwater=None), processed=499, now_ms=NOW)
    assert not caught_up(**progress(polled_ms=None), processed=499, now_ms=NOW)
    stale = progress(polled_ms=NOW - FRESH_MS - 1)  # paused, rebalancing or records buffered
    assert not caught_up(**stale, processed=499, now_ms=NOW)
