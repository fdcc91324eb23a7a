"""stop_restore: the refused record is counted and logged, then the worker crashes."""

from __future__ import annotations

import logging

import pytest

from agents.unreadable import stop_restore
from stream.core.sealing import StateRecordError
from stream.runtime import Runtime


class _App:
    def __init__(self) -> None:
        self.crashed: BaseException | None = None

    async def crash(self, err: BaseException) -> None:
        self.crashed = err


async def test_a_refused_record_is_counted_logged_and_crashes_the_worker(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    app, err = _App(), StateRecordError("models partition 0: refused")
    with caplog.at_level(logging.CRITICAL):
        await stop_restore(app, err, rt.metrics, "models")
    assert app.crashed is err and "models partition 0: refused" in caplog.text
    value = rt.metrics.registry.get_sample_value(
        "pulse_state_records_refused_total", {"table": "models"}
    )
    assert value == 1
