"""Replay recorded events from JSONL, CSV or Parquet into the events topic.

Each event keeps its own ``event_time`` (nothing is rewritten); the Kafka key is its
``user_id`` or ``anonymous_id``. JSONL lines go out byte for byte (blank lines are
skipped), so malformed lines reach the worker and its DLQ like live traffic. Table
rows (CSV, Parquet) become JSON objects: empty cells are dropped, dotted column
names (``consent.marketing``, ``context.ip``) become nested objects, JSON text in
``consent`` / ``context`` / ``properties`` cells is parsed, and a numeric
``event_time`` / ``sent_at`` stays an integer of epoch milliseconds.

>>> records = iter_file_records("events.csv")  # doctest: +SKIP
>>> next(records)  # doctest: +SKIP
(b'u-1', b'{"event_id":"e1","type":"view","event_time":1714564800000,"user_id":"u-1",...}')
>>> asyncio.run(replay_file(Settings.from_env(), "events.parquet", rate=1000))  # doctest: +SKIP
{'file': 'events.parquet', 'format': 'parquet', 'sent': 5000, ...}
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import math
import re
import sys
from collections.abc import Iterable, Iterator
from decimal import Decimal
from itertools import islice
from pathlib import Path
from typing import IO, Any

import orjson

from stream.config import Settings
from stream.core.errors import PulseError
from stream.core.validation import receive_time_ms
from stream.kafka.writer import EventWriter

KeyValue = tuple[bytes | None, bytes]

FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_SUPPORTED = ".jsonl, .ndjson or .json (one JSON event per line), .csv, .parquet or .pq"
_OBJECT_COLUMNS = ("consent", "context", "properties")
_TIME_FIELDS = ("event_time", "sent_at")
_INT_RE = re.compile(r"^\s*-?\d+\s*$")
_INTEGRAL_FLOAT_RE = re.compile(r"^\s*-?\d+\.0*\s*$")
_FLOAT_RE = re.compile(r"^\s*-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")
_TRUE = {"true", "yes", "1"}
_FALSE = {"false", "no", "0"}
_CSV_NULLS = ["", "null", "NULL", "None", "NaN", "nan"]
_MAX_JSON_ARRAY_BYTES = 256 * 1024 * 1024
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ONE_MS = dt.timedelta(milliseconds=1)


class ReplayError(PulseError, ValueError):
    """The file cannot be replayed (unknown type, unreadable content)."""


def detect_format(path: str | Path) -> tuple[str, bool]:
    """Return ``(format, gzipped)`` for a replay file or raise a message saying what to do.

    >>> detect_format("/no/such/file.jsonl")
    Traceback (most recent call last):
    ...
    FileNotFoundError: cannot replay /no/such/file.jsonl: the file does not exist; check the path
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"cannot replay {p}: the file does not exist; check the path")
    if p.is_dir():
        raise ReplayError(f"cannot replay {p}: it is a directory; pass one {_SUPPORTED} file")
    suffixes = [s.lower() for s in p.suffixes]
    gz = bool(suffixes) and suffixes[-1] == ".gz"
    ext = (suffixes[-2] if len(suffixes) > 1 else "") if gz else (suffixes[-1] if suffixes else "")
    fmt = FORMATS.get(ext)
    if fmt is None or (gz and fmt == "parquet"):
        shown = "".join(suffixes[-2:] if gz else suffixes[-1:]) or "(no extension)"
        raise ReplayError(
            f"cannot replay {p}: unknown file type {shown}; use {_SUPPORTED} "
            "(.jsonl.gz and .csv.gz also work), or rename the file to the matching extension"
        )
    return fmt, gz


def iter_file_records(path: str | Path, chunk_rows: int = 10_000) -> Iterator[KeyValue]:
    """Yield ``(key, value)`` for every event in a JSONL, CSV or Parquet file.

    The file type is checked at once (before iteration starts), so a wrong path or
    extension fails fast with :class:`FileNotFoundError` / :class:`ReplayError`.
    """
    fmt, gz = detect_format(path)
    p = Path(path)
    if fmt == "jsonl":
        return _jsonl_records(p, gz)
    if fmt == "csv":
        return _csv_records(p, chunk_rows)
    return _parquet_records(p, chunk_rows)


def count_records(path: str | Path) -> int | None:
    """Best-effort number of records (for progress bars); ``None`` when unknown."""
    fmt, gz = detect_format(path)
    p = Path(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(p).metadata.num_rows)
    if gz:
        return None
    lines = 0
    last = b"\n"
    with p.open("rb") as f:
        while block := f.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last != b"\n"
    return max(0, lines - 1) if fmt == "csv" else lines


# -- JSON lines ---------------------------------------------------------------------------


def _open(p: Path, gz: bool) -> IO[bytes]:
    if gz:
        return gzip.open(p, "rb")  # type: ignore[return-value]
    return p.open("rb")


def _jsonl_records(p: Path, gz: bool) -> Iterator[KeyValue]:
    if p.suffix.lower() == ".json" and not gz:
        array = _json_array(p)
        if array is not None:
            for item in array:
                yield _key_of(item), orjson.dumps(item)
            return
    with _open(p, gz) as f:
        first = True
        for line in f:
            raw = line.rstrip(b"\r\n")
            if first:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark
                first = False
            if not raw.strip():
                continue
            yield _key_of_raw(raw), raw


def _json_array(p: Path) -> list[Any] | None:
    """A ``.json`` file holding one JSON array of events (instead of JSON lines)."""
    with p.open("rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head.startswith(b"[") or p.stat().st_size > _MAX_JSON_ARRAY_BYTES:
        return None
    try:
        doc = orjson.loads(p.read_bytes().removeprefix(b"\xef\xbb\xbf"))
    except orjson.JSONDecodeError:
        return None  # e.g. one array per line: handled as JSON lines
    return doc if isinstance(doc, list) else None


def _key_of_raw(raw: bytes) -> bytes | None:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return _key_of(obj)


def _key_of(obj: Any) -> bytes | None:
    if not isinstance(obj, dict):
        return None
    for name in ("user_id", "anonymous_id"):
        value = obj.get(name)
        if isinstance(value, str) and value:
            return value.encode()
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value).encode()
    return None


# -- tables -------------------------------------------------------------------------------


def _csv_records(p: Path, chunk_rows: int) -> Iterator[KeyValue]:
    import pandas as pd

    try:
        reader = pd.read_csv(
            p,
            dtype=str,
            keep_default_na=False,
            na_values=_CSV_NULLS,
            chunksize=chunk_rows,
            compression="infer",
        )
    except pd.errors.EmptyDataError:
        return
    with reader:
        while True:
            try:
                frame = next(reader)
            except StopIteration:
                return
            except (pd.errors.ParserError, UnicodeDecodeError) as exc:
                raise ReplayError(
                    f"cannot read {p} as CSV ({exc}); check it is UTF-8, comma-separated text "
                    "with a header row"
                ) from exc
            yield from _rows_to_records(frame.to_dict("records"), from_text=True)


def _parquet_records(p: Path, chunk_rows: int) -> Iterator[KeyValue]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(p)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ReplayError(f"cannot read {p} as Parquet ({exc}); check the file is Parquet") from exc
    columns = [c for c in parquet.schema_arrow.names if not c.startswith("__index_level_")]
    for batch in parquet.iter_batches(batch_size=chunk_rows, columns=columns):
        yield from _rows_to_records(batch.to_pylist(), from_text=False)


def _rows_to_records(rows: Iterable[dict[Any, Any]], from_text: bool) -> Iterator[KeyValue]:
    for row in rows:
        event = row_to_event(row, from_text=from_text)
        yield _key_of(event), orjson.dumps(event, default=_json_default)


def row_to_event(row: dict[Any, Any], from_text: bool = False) -> dict[str, Any]:
    """Turn one table row into an event object (see the module docstring).

    ``from_text`` says cells are untyped text (CSV): then revenue becomes a number,
    ``consent.*`` a boolean and ``properties.*`` numbers/booleans where they look so.

    >>> row = {"event_id": "e1", "event_time": "1714564800000", "revenue": "9.5",
    ...        "consent.marketing": "true", "context.ip": "10.0.0.1", "order_id": None}
    >>> ev = row_to_event(row, from_text=True)
    >>> ev["event_time"], ev["revenue"], ev["consent"], ev["context"], "order_id" in ev
    (1714564800000, 9.5, {'marketing': True}, {'ip': '10.0.0.1'}, False)
    """
    event: dict[str, Any] = {}
    dotted: list[tuple[str, Any]] = []
    for column, cell in row.items():
        value = _native(cell)
        if value is None:
            continue
        name = str(column)
        if "." in name:
            dotted.append((name, value))
            continue
        if name in _TIME_FIELDS:
            value = _time_value(value)
        elif name in _OBJECT_COLUMNS and isinstance(value, str):
            value = _maybe_object(value)
        elif name == "revenue" and from_text and isinstance(value, str):
            value = _number(value)
        event[name] = value
    for name, value in dotted:
        head, *rest = name.split(".")
        if from_text and isinstance(value, str):
            if head == "consent":
                value = _bool(value)
            elif head == "properties":
                value = _scalar(value)
        parent = event.get(head)
        if parent is None:
            parent = event[head] = {}
        node = parent
        for part in rest[:-1]:
            if not isinstance(node, dict):
                break
            node = node.setdefault(part, {})
        if isinstance(node, dict):
            node[rest[-1]] = value
        else:
            event[name] = value  # conflicts with a non-object cell: keep it flat, never drop it
    return event


def _native(cell: Any) -> Any:
    """Plain Python value of a cell, or ``None`` for every flavour of missing."""
    if cell is None:
        return None
    if isinstance(cell, float):
        return None if math.isnan(cell) else cell
    item = getattr(cell, "item", None)  # numpy scalars
    if item is not None and type(cell).__module__ == "numpy":
        return _native(item())
    try:
        import pandas as pd

        if cell is pd.NA or cell is pd.NaT:
            return None
    except ImportError:  # pragma: no cover
        pass
    return cell


def _time_value(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and (_INT_RE.match(value) or _INTEGRAL_FLOAT_RE.match(value)):
        return int(float(value)) if "." in value else int(value)
    if isinstance(value, dt.datetime):  # a timestamp column: epoch milliseconds (naive = UTC)
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return (value - _EPOCH) // _ONE_MS
    return value


def _maybe_object(value: str) -> Any:
    if value.lstrip().startswith("{"):
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
        if isinstance(parsed, dict):
            return parsed
    return value


def _number(value: str) -> Any:
    if _FLOAT_RE.match(value):
        number = float(value)
        if math.isfinite(number):
            return int(number) if _INT_RE.match(value) else number
    return value


def _bool(value: str) -> Any:
    low = value.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    return value


def _scalar(value: str) -> Any:
    low = value.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    return _number(value)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        return float(obj)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", errors="replace")
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    tolist = getattr(obj, "tolist", None)  # numpy arrays and scalars
    if tolist is not None:
        return tolist()
    isoformat = getattr(obj, "isoformat", None)  # pandas Timestamp, time, timedelta-likes
    if isoformat is not None:
        return isoformat()
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


# -- sending ------------------------------------------------------------------------------


async def replay_file(
    settings: Settings,
    path: str | Path,
    rate: float | None = None,
    progress: bool = True,
    batch: int = 1000,
) -> dict[str, Any]:
    """Send every event of ``path`` to the events topic; return a summary.

    ``rate`` is events per second (``None``: as fast as Kafka acknowledges). Sends
    wait for ``acks=all`` batch by batch, so per-key order is kept.
    """
    if rate is not None and not rate > 0:
        raise ValueError(f"rate must be > 0 events/s (or None for as fast as possible), got {rate}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    fmt, _ = detect_format(path)
    records = iter_file_records(path)
    total = count_records(path)
    chunk_size = batch if rate is None else max(1, min(batch, int(rate / 10)))
    topic = settings.topic("events")

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[speed]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not (progress and sys.stdout.isatty()),
    )
    task_id = bar.add_task(f"replay {Path(path).name}", total=total, speed="")
    loop = asyncio.get_running_loop()
    sent = without_key = 0
    started = loop.time()
    with bar:
        async with EventWriter(settings) as writer:
            while chunk := list(islice(records, chunk_size)):
                if rate is not None:
                    ahead = started + sent / rate - loop.time()
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                # the record timestamp is the event's original receive time, so skew
                # correction and windows use the event's own time, not the replay's
                await writer.send_timestamped(
                    [(k, v, receive_time_ms(v)) for k, v in chunk], topic=topic
                )
                sent += len(chunk)
                without_key += sum(1 for key, _ in chunk if key is None)
                speed = sent / max(loop.time() - started, 1e-9)
                bar.update(task_id, advance=len(chunk), speed=f"{speed:,.0f} ev/s")
        bar.update(task_id, total=sent)
    elapsed = loop.time() - started
    return {
        "file": str(path),
        "format": fmt,
        "topic": topic,
        "sent": sent,
        "without_key": without_key,
        "elapsed_s": round(elapsed, 3),
        "achieved_rate": round(sent / elapsed, 1) if elapsed > 0 else 0.0,
        "target_rate": rate,
    }
