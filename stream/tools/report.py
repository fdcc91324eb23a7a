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
from pathlib import Path
from typing import Any

import orjson

from stream.config import Settings
from stream.core.report import EmptyReportError, attribution_table, metrics_frame, offer_table
from stream.kafka.reading import Advance, ProgressFactory, TopicMissing, read_topic
from stream.tools.report_files import write_report

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TRIGGERS_FILE = "triggers.jsonl"
OFFERS_FILE = "offers.jsonl"


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


async def offers_from_kafka(
    settings: Settings, timeout_s: float = 10, progress: ProgressFactory | None = None
) -> list[dict[str, Any]]:
    """Offer outcomes of ``settings.topic("offers")`` (none when the topic does not exist)."""
    try:
        return await read_topic(settings, settings.topic("offers"), timeout_s, progress)
    except TopicMissing:
        return []


def offers_from_dir(path: str | Path) -> list[dict[str, Any]]:
    """Offer outcomes of a backtest directory (``offers.jsonl``; none without the file)."""
    found = Path(path) / OFFERS_FILE
    return _read_jsonl(found, None) if found.is_file() else []


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
            records, triggers, offers = asyncio.run(_read_kafka(settings, timeout_s, track))
            where = f"{settings.topic('metrics')} on {settings.kafka_bootstrap}"
            empty_hint = (
                f"no closed windows found in {settings.topic('metrics')}: let the worker run "
                "past PULSE_WINDOW + PULSE_GRACE or check the topic prefix (PULSE_TOPIC_PREFIX)"
            )
        else:
            records, triggers = records_from_dir(source, track)
            offers = offers_from_dir(source)
            where = str(source)
            empty_hint = (
                f"no closed windows found in {Path(source) / METRICS_FILE}: the backtest "
                "produced no metrics; check its input covers at least one full window"
            )
    frame = metrics_frame(records)
    if frame.empty:
        raise EmptyReportError(empty_hint)
    with console.status("rendering report ...") if show else contextlib.nullcontext():
        currencies = {r.get("currency") for r in records if isinstance(r, dict)} - {None}
        currency = str(currencies.pop()) if len(currencies) == 1 else ""
        return write_report(
            frame,
            Path(out_dir),
            "Pulse KPI report",
            triggers,
            source=where,
            currency=currency,
            attribution=attribution_table(records),
            attribution_channels=attribution_table(records, by="channel"),
            offers=offer_table(offers),
        )


Records = list[dict[str, Any]]


async def _read_kafka(
    settings: Settings, timeout_s: float, track: ProgressFactory
) -> tuple[Records, Records, Records]:
    records = await records_from_kafka(settings, timeout_s, track)
    triggers = await triggers_from_kafka(settings, timeout_s, track)
    offers = await offers_from_kafka(settings, timeout_s, track)
    return records, triggers, offers
