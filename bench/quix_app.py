"""The windowed-counts job of ``bench.windowed_counts`` written with Quix Streams.

Runs in its own virtualenv (``bench/.venv-quix``, ``quixstreams==3.28.1``), started
by the benchmark as a subprocess; it does not import Pulse.

Reads Pulse-format JSON events, takes the event time from ``event_time``
(epoch ms), re-keys by campaign × variant × channel (``group_by``: an internal
repartition topic), counts views / clicks / purchases and sums revenue in
tumbling windows, and writes each *final* window to the output topic as
``{"key", "start", "end", "views", "clicks", "purchases", "revenue"}``.

Quix closes windows only when newer messages arrive (no wall-clock close), so
the benchmark appends ``{"type": "flush", "n": i, "event_time": <far future>}``
records once the real ones are processed; they get keys of their own
(``~flush-<n>``) and, with the ``partition`` closing strategy, close every
open window of the repartition partition they land on. Counting is unchanged
(a flush record adds zero to its own, never-closed window).

Late messages (dropped by Quix because their window already closed) are
counted, not logged one by one; on exit the counts go to ``--stats``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any

from quixstreams import Application
from quixstreams.dataframe.windows import aggregations as agg

_TYPE = {"view": (1, 0, 0), "click": (0, 1, 0), "purchase": (0, 0, 1)}


def event_time(value: Any, headers: Any, timestamp: int, timestamp_type: Any) -> int:
    t = value.get("event_time") if isinstance(value, dict) else None
    return int(t) if isinstance(t, int | float) else timestamp


def group_key(value: dict[str, Any]) -> str:
    if value.get("type") == "flush":
        return f"~flush-{value.get('n', 0)}"
    variant = value.get("variant_id") or ""
    return f"{value.get('campaign_id')}|{variant}|{value.get('channel') or 'web'}"


def counts(value: dict[str, Any]) -> dict[str, Any]:
    v, c, p = _TYPE.get(value.get("type", ""), (0, 0, 0))
    return {"v": v, "c": c, "p": p, "r": float(value.get("revenue") or 0.0) if p else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--window-ms", type=int, default=60_000)
    ap.add_argument("--grace-ms", type=int, default=5_000)
    ap.add_argument("--commit-interval", type=float, default=1.0)
    ap.add_argument("--stats", required=True, help="JSON file written on exit")
    args = ap.parse_args()

    stats = {"late": 0, "processed": 0, "first_processed": None, "last_processed": None}

    def on_late(*_: Any) -> bool:
        stats["late"] += 1
        return False  # counted, not logged

    written = [0.0]

    def write_stats() -> None:
        with open(args.stats, "w") as fh:
            json.dump(stats, fh)

    def on_processed(topic: str, partition: int, offset: int) -> None:
        now = time.time()
        if stats["first_processed"] is None:
            stats["first_processed"] = now
            print(f"QUIX_FIRST {now:.6f}", flush=True)
        stats["processed"] += 1
        stats["last_processed"] = now
        if now - written[0] >= 1.0:  # the benchmark reads it while the app runs
            written[0] = now
            write_stats()

    app = Application(
        broker_address=args.broker,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        commit_interval=args.commit_interval,
        state_dir=args.state_dir,
        loglevel="WARNING",
        on_message_processed=on_processed,
    )
    source = app.topic(args.input, value_deserializer="json", timestamp_extractor=event_time)
    sink = app.topic(args.output, key_serializer="str", value_serializer="json")

    def with_key(value: dict[str, Any], key: Any, timestamp: int, headers: Any) -> dict[str, Any]:
        return {"key": key, **value}

    sdf = app.dataframe(source)
    sdf = sdf.group_by(group_key, name="campaign_variant_channel")
    sdf = sdf.apply(counts)
    sdf = (
        sdf.tumbling_window(duration_ms=args.window_ms, grace_ms=args.grace_ms, on_late=on_late)
        .agg(
            views=agg.Sum("v"),
            clicks=agg.Sum("c"),
            purchases=agg.Sum("p"),
            revenue=agg.Sum("r"),
        )
        .final(closing_strategy="partition")
    )
    sdf = sdf.apply(with_key, metadata=True)
    sdf.to_topic(sink)

    print("QUIX_STARTING", flush=True)
    try:
        app.run()
    finally:
        write_stats()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.exit(0)


if __name__ == "__main__":
    main()
