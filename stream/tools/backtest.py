"""``pulse backtest FILE --out DIR``: the live pipeline's windows and rules, offline.

Records are assigned to partitions exactly as Kafka's default partitioner would
(murmur2 of the key), stamped with their original receive time, and run
through the stages the worker builds (:class:`~stream.core.pipeline.Pipeline`);
at the end every partition is closed. Writes ``metrics.jsonl``, ``triggers.jsonl``,
``dlq.jsonl`` and ``summary.json`` (``pulse report --from DIR`` charts them).
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from itertools import count, islice
from pathlib import Path
from typing import Any

import orjson

from stream.config import Settings
from stream.core.fx import FxRates
from stream.core.ingest import RawRecord
from stream.core.pipeline import CLOSE_ALL, Pipeline
from stream.core.validation import receive_time_ms
from stream.kafka import routing
from stream.tools.replay import count_records, iter_file_records


def partition_for(key: bytes | None, partitions: int, fallback: int) -> int:
    """Kafka's default partition for a key (round robin for keyless records)."""
    return fallback % partitions if key is None else routing.partition_for(key, partitions)


def run_backtest(
    settings: Settings,
    path: str | Path,
    out_dir: str | Path,
    campaigns: dict[str, dict[str, Any]] | None = None,
    progress: bool = True,
    batch: int = 1000,
    fx: FxRates | None = None,
) -> dict[str, Any]:
    """``fx``: exchange rates into ``settings.currency`` (``--fx FILE``); none: only
    purchases in the reporting currency count as revenue, as on a worker without rates."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_parts = settings.partitions
    config = settings.pipeline_config()  # the worker's stages (and salt)
    if fx is not None:
        config = replace(config, fx=fx)
    pipeline = Pipeline(config)
    stage, merge = pipeline.stages((campaigns or {}).get)
    offsets = [count() for _ in range(n_parts)]
    totals: dict[str, float] = {
        "records": 0,
        "valid": 0,
        "duplicates": 0,
        "late": 0,
        "invalid": 0,
        "windows": 0,
        "triggers": 0,
        "offers": 0,
        "drifts": 0,
    }

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("[bold]backtest"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not (progress and sys.stderr.isatty()),
    )
    started = time.monotonic()
    names = ("metrics", "triggers", "dlq", "offers")
    files = {name: (out / f"{name}.jsonl").open("wb") for name in names}

    def emit(partials: list[Any]) -> None:
        result = merge.add(partials, None)
        for r in result.records:
            files["metrics"].write(orjson.dumps(r) + b"\n")
        for t in result.triggers:
            files["triggers"].write(orjson.dumps(t) + b"\n")
        totals["windows"] += len(result.records)
        totals["triggers"] += len(result.triggers)
        totals["drifts"] += len(result.drifts)

    try:
        with bar:
            task = bar.add_task("backtest", total=count_records(path))
            records = iter_file_records(path)
            rr = count()
            internal: list[tuple[bytes | None, bytes]] = []  # link notices and handovers
            while (chunk := list(islice(records, batch))) or internal:
                raws: list[RawRecord] = []
                for key, value in internal:  # to their partitions, before the next records
                    p = partition_for(key, n_parts, 0)
                    raws.append((key, value, p, next(offsets[p]), 0))
                for key, value in chunk:
                    p = partition_for(key, n_parts, next(rr))
                    raws.append((key, value, p, next(offsets[p]), receive_time_ms(value) or 0))
                result = stage.process(raws, None)
                internal = result.internal
                for _, rec in result.result.dlq + result.late:
                    files["dlq"].write(rec + b"\n")
                for offer in result.offers:
                    files["triggers"].write(orjson.dumps(offer) + b"\n")
                totals["offers"] += len(result.offers)
                for outcome in result.outcomes:
                    files["offers"].write(orjson.dumps(outcome) + b"\n")
                totals["records"] += len(chunk)
                totals["valid"] += len(result.counted)
                totals["duplicates"] += result.result.duplicates
                totals["late"] += len(result.late)
                totals["invalid"] += len(result.result.dlq)
                emit(stage.close(result.touched))
                bar.update(task, advance=len(chunk))
            emit(stage.close(range(n_parts), CLOSE_ALL))
            for outcome in stage.finish_offers():  # the data ended: their windows did too
                files["offers"].write(orjson.dumps(outcome) + b"\n")
    finally:
        for f in files.values():
            f.close()
    auc, loss, labels = stage.model_quality()
    totals.update(model_rocauc=round(auc, 4), model_logloss=round(loss, 4), model_labels=labels)
    totals["elapsed_s"] = round(time.monotonic() - started, 3)
    totals["rate"] = round(totals["records"] / max(totals["elapsed_s"], 1e-9))
    summary = {"file": str(path), "out": str(out), **totals}
    (out / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    return summary
