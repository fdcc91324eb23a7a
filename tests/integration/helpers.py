"""Produce and consume raw records on the test broker."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord


def topic(env: dict[str, str], short: str) -> str:
    return env["PULSE_TOPIC_PREFIX"] + short


async def produce(
    bootstrap: str,
    name: str,
    records: list[tuple[bytes | None, bytes]],
    partition: int | None = None,
) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_request_size=16 * 1024 * 1024
    )
    await producer.start()
    try:
        futures = [
            await producer.send(name, key=k, value=v, partition=partition) for k, v in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def consume_records(
    bootstrap: str,
    name: str,
    expected: int | None = None,
    timeout_s: float = 30,
    isolation_level: str = "read_committed",
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read a topic from the beginning until ``expected`` records or the topic's end.

    ``read_committed`` as the product's consumers must read: records of a
    transaction a crash cut short are not seen (``read_uncommitted`` shows them).
    """
    consumer = AIOKafkaConsumer(
        name,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        isolation_level=isolation_level,
    )
    await consumer.start()
    out: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                out.extend(msgs)
            if expected is not None and len(out) >= expected:
                break
            if expected is None and not batch:
                ends = await consumer.end_offsets(list(consumer.assignment()))
                positions = {tp: await consumer.position(tp) for tp in consumer.assignment()}
                if all(positions[tp] >= end for tp, end in ends.items()):
                    break
    finally:
        await consumer.stop()
    return out


async def consume_all(
    bootstrap: str,
    name: str,
    expected: int | None = None,
    timeout_s: float = 30,
    isolation_level: str = "read_committed",
) -> list[tuple[bytes | None, bytes]]:
    """(key, value) of the records :func:`consume_records` reads."""
    records = await consume_records(bootstrap, name, expected, timeout_s, isolation_level)
    return [(r.key, r.value) for r in records]


TYPE_INDEX = {"view": 0, "click": 1, "purchase": 2, "add_to_cart": 4}


def window_truth(
    events: Iterable[Mapping[str, Any]],
    size_ms: int,
    attribution: Mapping[str, tuple[str, str, str]],
) -> dict[tuple[Any, ...], list[Any]]:
    """Reference aggregation written independently of Pulse.

    ``(campaign, variant, channel, window_start) -> [views, clicks, purchases, revenue,
    carts]`` over first-seen events with epoch-ms ``event_time``; a purchase without
    ``campaign_id`` counts for the row ``attribution[event_id]``; events of no campaign
    window (identify; views, clicks and add-to-carts of an item only) count nowhere.
    """
    out: dict[tuple[Any, ...], list[Any]] = defaultdict(lambda: [0, 0, 0, 0.0, 0])
    for e in events:
        if e["type"] == "identify" or ("campaign_id" not in e and e["type"] != "purchase"):
            continue
        ws = e["event_time"] - e["event_time"] % size_ms
        if "campaign_id" in e:
            cid, vid, ch = e["campaign_id"], e["variant_id"], e["channel"]
        else:
            cid, vid, ch = attribution[e["event_id"]]
        row = out[(cid, vid, ch, ws)]
        row[TYPE_INDEX[e["type"]]] += 1
        if e["type"] == "purchase":
            row[3] += e["revenue"]
    return dict(out)


def records_by_key(
    raw: list[tuple[bytes | None, bytes]], credit_only: bool = False
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Window records by (campaign, variant, channel, window_start); fails on a repeat.

    Records that only carry attribution credit (no event counted in that row: a
    campaign clicked before a purchase in another window) are left out unless
    ``credit_only``; the references here count events, not credit.
    """
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    for _, value in raw:
        r = orjson.loads(value)
        key = (r["campaign_id"], r["variant_id"] or "", r["channel"], r["window_start"])
        assert key not in seen, f"window record emitted twice: {key}"
        seen[key] = r
    if credit_only:
        return seen
    return {k: r for k, r in seen.items() if any(r[f] for f in COUNTED)}


COUNTED = ("views", "clicks", "purchases", "carts")


async def final_records(
    bootstrap: str, name: str, n: int, timeout_s: float = 60, credit_only: bool = False
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Wait for ``n`` records (:func:`records_by_key`), give a repeat time to show up, then
    read the whole topic."""
    await consume_all(bootstrap, name, expected=n, timeout_s=timeout_s)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while len(records_by_key(await consume_all(bootstrap, name), credit_only)) < n:
        if asyncio.get_running_loop().time() > deadline:
            break  # the caller's comparison says what is missing
        await asyncio.sleep(1)
    await asyncio.sleep(3)
    return records_by_key(await consume_all(bootstrap, name), credit_only)


STREAM_SIZE_MS = 10_000
STREAM_BASE = 1_700_000_000_000 - 1_700_000_000_000 % STREAM_SIZE_MS  # a window edge, long ago
#: campaign, views per window, variants, channels (for :func:`campaign_stream`)
STREAM_CAMPAIGNS = [
    ("c-drop", 600, ["A"], ["web"]),
    ("c1", 150, ["A", "B"], ["web", "mobile"]),
    ("c2", 150, ["A", "B"], ["email", "web"]),
    ("c3", 120, ["A"], ["social", "search", "display"]),
]


def campaign_stream(
    seed: int, windows: int = 14, drop_from: int = 8, size_ms: int = STREAM_SIZE_MS
) -> list[dict[str, Any]]:
    """A seeded stream in event-time order, ~3 % of it re-sent a few records later.

    Four campaigns over ``windows`` windows from :data:`STREAM_BASE`: views,
    clicks, purchases with and without ``campaign_id`` (the latter attributed to
    the user's last click). ``c-drop``'s CTR falls from 3 % to 0.3 % from window
    ``drop_from`` on, so the trigger rules fire one ``campaign.pause`` for it.
    """
    rng = random.Random(seed)
    timed: list[tuple[int, int, dict[str, Any]]] = []
    n = 0

    def add(t: int, e: dict[str, Any]) -> None:
        nonlocal n
        n += 1
        timed.append((t, n, {"event_id": f"e{n}", "event_time": t, **e}))

    for w in range(windows):
        for cid, views, variants, channels in STREAM_CAMPAIGNS:
            if cid == "c-drop":
                clicks = 2 if w >= drop_from else views * 3 // 100
            else:
                clicks = views * 6 // 100
            for i in range(views):
                t = STREAM_BASE + w * size_ms + rng.randrange(size_ms)
                user = f"u{rng.randrange(400)}"
                row = {
                    "user_id": user,
                    "campaign_id": cid,
                    "variant_id": rng.choice(variants),
                    "channel": rng.choice(channels),
                }
                add(t, {"type": "view", **row})
                if i >= clicks:
                    continue
                add(t + rng.randrange(1000), {"type": "click", **row})
                if rng.random() < 0.4:
                    buy: dict[str, Any] = {"type": "purchase", "user_id": user}
                    buy.update(currency="EUR", revenue=rng.randrange(1, 400) * 0.25)  # exact
                    if rng.random() < 0.5:  # else attributed to the user's last click
                        buy.update(row)
                    add(t + 1000 + rng.randrange(3000), buy)
    timed.sort(key=lambda x: (x[0], x[1]))
    events = [e for _, _, e in timed]
    out: list[dict[str, Any]] = []
    resend: dict[int, list[dict[str, Any]]] = {}
    for i, e in enumerate(events):
        out.append(e)
        out.extend(resend.pop(i, []))
        if rng.random() < 0.03:
            resend.setdefault(i + rng.randrange(1, 30), []).append(e)
    for later in resend.values():
        out.extend(later)
    return out


def stream_reference(
    events: list[dict[str, Any]],
    size_ms: int = STREAM_SIZE_MS,
    attribution_ms: int = 3_600_000,
) -> dict[tuple[Any, ...], list[Any]]:
    """First occurrences, last-click attribution in stream order, windowed independently."""
    first: list[dict[str, Any]] = []
    seen: set[str] = set()
    last_click: dict[str, tuple[int, str, str, str]] = {}
    attribution: dict[str, tuple[str, str, str]] = {}
    for e in events:
        if e["event_id"] in seen:
            continue
        seen.add(e["event_id"])
        t, user = e["event_time"], e["user_id"]
        if e["type"] == "click":
            prev = last_click.get(user)
            if prev is None or t >= prev[0]:
                last_click[user] = (t, e["campaign_id"], e["variant_id"], e["channel"])
        if e["type"] == "purchase" and "campaign_id" not in e:
            click = last_click.get(user)
            if click is None or not 0 <= t - click[0] <= attribution_ms:
                continue  # unattributed: in no window record
            attribution[e["event_id"]] = click[1:]
        first.append(e)
    return window_truth(first, size_ms, attribution)


def encode_events(events: list[dict[str, Any]]) -> list[tuple[bytes | None, bytes]]:
    return [(e["user_id"].encode(), orjson.dumps(e)) for e in events]


# --- user offers: a propensity history with buyers and browsers ---------------------------

OFFER_BASE = 1_700_000_000_000 - 1_700_000_000_000 % 60_000
MIN = 60_000


def history(users: int = 60, cycles: int = 4) -> list[dict]:
    """Buyers click then purchase; browsers only click (negatives once the window passes)."""
    out = []
    t = OFFER_BASE
    for _ in range(cycles):
        for i in range(users):
            for kind in ("buyer", "browser"):
                u = f"{kind}-{i}"
                n = len(out)
                out.append(
                    {
                        "event_id": f"h{n}",
                        "type": "view",
                        "event_time": t,
                        "user_id": u,
                        "campaign_id": "c1",
                    }
                )
                out.append(
                    {
                        "event_id": f"h{n + 1}",
                        "type": "click",
                        "event_time": t + 1000,
                        "user_id": u,
                        "campaign_id": "c1",
                        "consent": {"marketing": False},
                    }
                )
                if kind == "buyer":
                    out.append(
                        {
                            "event_id": f"h{n + 2}",
                            "type": "purchase",
                            "event_time": t + 2000,
                            "user_id": u,
                            "revenue": 20.0,
                            "currency": "EUR",
                        }
                    )
        t += 2 * MIN
    return sorted(out, key=lambda e: e["event_time"])


def final_click(user: str, consent: bool, n: int) -> dict:
    return {
        "event_id": f"f{n}",
        "type": "click",
        "event_time": OFFER_BASE + 9 * MIN,
        "user_id": user,
        "campaign_id": "c1",
        "consent": {"marketing": consent},
    }


def encode(events: list[dict]) -> list[tuple[bytes, bytes]]:
    return [(e["user_id"].encode(), orjson.dumps(e)) for e in events]


def describe(diff: dict[Any, tuple[Any, Any]], limit: int = 40) -> str:
    lines = [
        f"  {k[3]} {k[0]}/{k[1] or '-'}/{k[2]}: live {live}, expected {want}"
        for k, (live, want) in sorted(diff.items(), key=lambda kv: (kv[0][3], kv[0][:3]))
    ]
    more = f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else ""
    return "\n".join(lines[:limit]) + more


def assert_exact(got: dict[Any, dict[str, Any]], expected: dict[Any, list[Any]]) -> None:
    """Every window record equals the reference; the message lists the windows that differ."""
    live = {
        k: [r["views"], r["clicks"], r["purchases"], r["revenue"], r["carts"]]
        for k, r in got.items()
    }
    want = {
        k: [v[0], v[1], v[2], round(v[3], 6), v[4] if len(v) > 4 else 0]
        for k, v in expected.items()
    }
    diff = {
        k: (live.get(k), want.get(k))
        for k in live.keys() | want.keys()
        if live.get(k) != want.get(k)
    }
    wrong = sum(
        a != b for live_row, want_row in diff.values()
        for a, b in zip(live_row or [None] * 5, want_row or [None] * 5, strict=True)
    )  # fmt: skip
    assert not diff, (
        f"{len(diff)} of {len(want)} window records differ ({wrong} wrong fields; "
        f"[views, clicks, purchases, revenue, carts]):\n{describe(diff)}"
    )


RULES = Path(__file__).resolve().parents[2] / "stream" / "rules.yaml"


def offer_rules(tmp_path: Path, min_labels: int, min_score: float) -> Path:
    """The shipped rules file with the user offer's warm-up and threshold changed."""
    rules = tmp_path / "rules.yaml"
    text = RULES.read_text().replace("min_labels: 200", f"min_labels: {min_labels}")
    rules.write_text(text.replace("min_score: 0.5", f"min_score: {min_score}"))
    return rules
