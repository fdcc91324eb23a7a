"""``pulse report``: read closed windows (and triggers) from Kafka or a backtest directory,
then write the KPI report with :mod:`stream.core.report`.

From Kafka the whole ``pulse.metrics`` and ``pulse.triggers`` topics are read from their
first offsets up to the end offsets seen at start (no consumer group, nothing committed),
so running a report never disturbs the workers. A backtest directory holds
``metrics.jsonl`` and optionally ``triggers.jsonl`` (one JSON object per line).

>>> run_report(Settings.from_env(), None, "report")  # doctest: +SKIP
PosixPath('report/report.html')
>>> records, triggers = records_from_dir("backtest-out")  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from stream.config import Settings
from stream.core.errors import PulseError
from stream.core.report import EmptyReportError, metrics_frame, write_report

log = logging.getLogger(__name__)

Advance = Callable[[int], None]
#: ``(description, total)`` → a callback advancing that progress task.
ProgressFactory = Callable[[str, int | None], Advance]

METRICS_FILE = "metrics.jsonl"
TRIGGERS_FILE = "triggers.jsonl"


class TopicMissing(PulseError, LookupError):
    """The topic does not exist on the broker."""


# -- Kafka --------------------------------------------------------------------------------


async def read_topic(
    settings: Settings,
    topic: str,
    timeout_s: float = 10,
    progress: ProgressFactory | None = None,
) -> list[dict[str, Any]]:
    """Every JSON-object value of ``topic``, from the first offset to the end offsets.

    End offsets are taken once at start, so records written meanwhile are left for the
    next report. ``timeout_s`` bounds connecting and any stretch without progress; a
    broker that stalls longer raises :class:`TimeoutError`. Tombstones are skipped, and
    so are values that are not JSON objects (counted in a warning). Raises
    :class:`TopicMissing` when the topic does not exist.
    """
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaError

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id=f"{settings.app_id}-report",
        request_timeout_ms=max(int(timeout_s * 1000), 5000) + 1000,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        **settings.kafka_client_kwargs(),
    )
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
    except (TimeoutError, KafkaError, OSError) as exc:
        await consumer.stop()
        raise ConnectionError(
            f"cannot reach Kafka at {settings.kafka_bootstrap} ({exc!r}); start one with "
            "`pulse broker`, set PULSE_KAFKA_BOOTSTRAP, or report from a backtest with --from DIR"
        ) from None
    out: list[dict[str, Any]] = []
    skipped = 0
    try:
        if topic not in await consumer.topics():  # checked first: never auto-create it
            raise TopicMissing(topic)
        consumer.subscribe([topic])  # without a group, every partition is assigned to us
        deadline = time.monotonic() + timeout_s
        while not consumer.assignment():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no partition metadata for {topic} within {timeout_s:.0f}s")
            await asyncio.sleep(0.05)
        tps = sorted(consumer.assignment())
        await consumer.seek_to_beginning(*tps)
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        total = sum(max(0, end[tp] - begin[tp]) for tp in tps)
        advance = progress(topic, total) if progress else None
        pending = {tp for tp in tps if end[tp] > begin[tp]}
        last_progress = time.monotonic()
        while pending:
            batches = await consumer.getmany(*pending, timeout_ms=500, max_records=5000)
            moved = 0
            for messages in batches.values():
                moved += len(messages)
                for message in messages:
                    if message.value is None:
                        continue
                    try:
                        value = orjson.loads(message.value)
                    except orjson.JSONDecodeError:
                        value = None
                    if isinstance(value, dict):
                        out.append(value)
                    else:
                        skipped += 1
                if messages and advance:
                    advance(len(messages))
            for tp in list(pending):
                if await consumer.position(tp) >= end[tp]:
                    pending.discard(tp)
            if moved:
                last_progress = time.monotonic()
            elif pending and time.monotonic() - last_progress > timeout_s:
                raise TimeoutError(
                    f"reading {topic} stalled for {timeout_s:.0f}s with {len(out):,} of about "
                    f"{total:,} records read; check the broker at {settings.kafka_bootstrap}"
                )
    finally:
        await consumer.stop()
    if skipped:
        log.warning("%s: skipped %d records that are not JSON objects", topic, skipped)
    return out


async def records_from_kafka(
    settings: Settings, timeout_s: float = 10, progress: ProgressFactory | None = None
) -> list[dict[str, Any]]:
    """All closed-window records of ``settings.topic("metrics")``.

    A missing topic reads as no records (:func:`run_report` then says what to do).
    """
    try:
        return await read_topic(settings, settings.topic("metrics"), timeout_s, progress)
    except TopicMissing:
        return []


async def triggers_from_kafka(
    settings: Settings, timeout_s: float = 10, progress: ProgressFactory | None = None
) -> list[dict[str, Any]]:
    """All triggers of ``settings.topic("triggers")`` (none when the topic does not exist)."""
    try:
        return await read_topic(settings, settings.topic("triggers"), timeout_s, progress)
    except TopicMissing:
        return []


# -- backtest directory -------------------------------------------------------------------


def records_from_dir(
    path: str | Path, progress: ProgressFactory | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(metrics records, triggers)`` from a backtest output directory.

    ``metrics.jsonl`` is required, ``triggers.jsonl`` optional (no file: no triggers).
    Blank lines are skipped; a line that is not a JSON object raises :class:`ValueError`
    naming the file and line.
    """
    directory = Path(path)
    if not directory.exists():
        raise FileNotFoundError(f"cannot report from {directory}: it does not exist")
    if not directory.is_dir():
        raise ValueError(
            f"cannot report from {directory}: pass the directory `pulse backtest --out` wrote "
            f"(holding {METRICS_FILE}), not a file"
        )
    metrics = directory / METRICS_FILE
    if not metrics.is_file():
        raise FileNotFoundError(
            f"cannot report from {directory}: no {METRICS_FILE} in it; run "
            f"`pulse backtest FILE --out {directory}` first or pass the right directory"
        )
    records = _read_jsonl(metrics, progress)
    triggers_path = directory / TRIGGERS_FILE
    triggers = _read_jsonl(triggers_path, progress) if triggers_path.is_file() else []
    return records, triggers


def _read_jsonl(path: Path, progress: ProgressFactory | None) -> list[dict[str, Any]]:
    advance = progress(path.name, path.stat().st_size) if progress else None
    out: list[dict[str, Any]] = []
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if advance:
                advance(len(line))
            raw = line.strip().removeprefix(b"\xef\xbb\xbf") if number == 1 else line.strip()
            if not raw:
                continue
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not valid JSON ({exc})") from None
            if not isinstance(value, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object per line")
            out.append(value)
    return out


# -- the command --------------------------------------------------------------------------


def run_report(
    settings: Settings | None,
    source: str | Path | None,
    out_dir: str | Path,
    *,
    timeout_s: float = 10,
    progress: bool = True,
) -> Path:
    """Read from Kafka (``source`` None; needs ``settings``) or a backtest directory and
    write the report into ``out_dir``; return the path of ``report.html``.

    Raises :class:`ValueError` (with what to do) when there is nothing to report,
    :class:`FileNotFoundError` for a wrong directory and :class:`ConnectionError` /
    :class:`TimeoutError` when Kafka cannot be read.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    console = Console(stderr=True)
    columns = (
        [TextColumn("[bold]{task.description}"), BarColumn()]
        + ([DownloadColumn()] if source is not None else [MofNCompleteColumn()])
        + [TaskProgressColumn(), TimeElapsedColumn()]
    )
    show = progress and console.is_terminal
    bar = Progress(*columns, console=console, disable=not show)

    def track(description: str, total: int | None) -> Advance:
        task = bar.add_task(f"read {description}", total=total)
        return lambda n: bar.advance(task, n)

    with bar:
        if source is None:
            if settings is None:
                raise ValueError("reading from Kafka needs settings (Settings.from_env())")
            records, triggers = asyncio.run(_read_kafka(settings, timeout_s, track))
            where = f"{settings.topic('metrics')} on {settings.kafka_bootstrap}"
            empty_hint = (
                f"no closed windows found in {settings.topic('metrics')}: let the worker run "
                "past PULSE_WINDOW + PULSE_GRACE or check the topic prefix (PULSE_TOPIC_PREFIX)"
            )
        else:
            records, triggers = records_from_dir(source, track)
            where = str(source)
            empty_hint = (
                f"no closed windows found in {Path(source) / METRICS_FILE}: the backtest "
                "produced no metrics; check its input covers at least one full window"
            )
    frame = metrics_frame(records)
    if frame.empty:
        raise EmptyReportError(empty_hint)
    with console.status("rendering report ...") if show else contextlib.nullcontext():
        return write_report(frame, Path(out_dir), "Pulse KPI report", triggers, source=where)


async def _read_kafka(
    settings: Settings, timeout_s: float, track: ProgressFactory
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    records = await records_from_kafka(settings, timeout_s, track)
    triggers = await triggers_from_kafka(settings, timeout_s, track)
    return records, triggers
