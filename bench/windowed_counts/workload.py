"""The workload: N Pulse-format events with Zipf users and their exact ground truth."""

from __future__ import annotations

import time
import uuid
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

WINDOW_MS = 60_000
GRACE_MS = 5_000
PARTITIONS = 4
SPAN_MS = 20 * 60_000
JITTER_MS = 1_000
USERS = 100_000
CAMPAIGNS = 200
VARIANTS = ("A", "B")
CHANNELS = ("web", "mobile", "email", "social", "search", "display")
CHANNEL_P = (0.34, 0.26, 0.08, 0.14, 0.10, 0.08)
TYPES = ("view", "click", "purchase")
TYPE_P = (0.80, 0.18, 0.02)
ZIPF_S = 1.1

Key = tuple[str, str, str, int]  # campaign_id, variant_id ("" = none), channel, window_start
Row = list[Any]  # [views, clicks, purchases, revenue]
Record = tuple[int, bytes, bytes]  # partition, key, value


@dataclass
class Workload:
    records: list[Record]
    truth: dict[Key, Row]
    max_event_time: int


class EventMaker:
    """Pulse-format events with Zipf users; counts the ground truth as it goes."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        weights = np.arange(1, USERS + 1, dtype=np.float64) ** -ZIPF_S
        self.user_cdf = np.cumsum(weights) / weights.sum()
        ids = self.rng.permutation(USERS)  # popularity rank -> user id (not id order)
        self.user_keys = [f"u-{i:06d}" for i in ids.tolist()]
        self.user_parts = [zlib.crc32(k.encode()) % PARTITIONS for k in self.user_keys]
        self.campaign_ids = [f"cmp-{i:03d}" for i in range(CAMPAIGNS)]
        self.run = uuid.uuid4().hex[:8]
        self.seq = 0

    def make(self, times: np.ndarray, truth: dict[Key, Row]) -> list[Record]:
        """One event per entry of ``times`` (epoch ms), in that order."""
        n = len(times)
        rng = self.rng
        users = np.searchsorted(self.user_cdf, rng.random(n), side="right").clip(0, USERS - 1)
        types = rng.choice(3, size=n, p=TYPE_P).tolist()
        camps = rng.integers(0, CAMPAIGNS, n).tolist()
        variants = rng.integers(0, len(VARIANTS), n).tolist()
        chans = rng.choice(len(CHANNELS), size=n, p=CHANNEL_P).tolist()
        revenue = np.round(rng.lognormal(3.7, 0.7, n), 2).tolist()
        user_keys, user_parts, campaign_ids = self.user_keys, self.user_parts, self.campaign_ids
        dumps = orjson.dumps
        out: list[Record] = []
        append = out.append
        prefix = f"b{self.run}-"
        seq = self.seq
        for i, (u, ts) in enumerate(zip(users.tolist(), times.tolist(), strict=True)):
            seq += 1
            t = types[i]
            user = user_keys[u]
            cid = campaign_ids[camps[i]]
            vid = VARIANTS[variants[i]]
            ch = CHANNELS[chans[i]]
            ev: dict[str, Any] = {
                "event_id": prefix + str(seq),
                "type": TYPES[t],
                "event_time": ts,
                "user_id": user,
                "campaign_id": cid,
                "variant_id": vid,
                "channel": ch,
                "session_id": f"s-{user}-{ts // 1_800_000}",
            }
            key = (cid, vid, ch, ts - ts % WINDOW_MS)
            row = truth.get(key)
            if row is None:
                row = truth[key] = [0, 0, 0, 0.0]
            row[t] += 1
            if t == 2:
                ev["order_id"] = "o-" + ev["event_id"]
                ev["revenue"] = revenue[i]
                ev["currency"] = "EUR"
                row[3] += revenue[i]
            append((user_parts[u], user.encode(), dumps(ev)))
        self.seq = seq
        return out


def prefill_workload(n: int, seed: int) -> Workload:
    now = int(time.time() * 1000)
    start = now - SPAN_MS - 3 * WINDOW_MS
    start -= start % WINDOW_MS
    maker = EventMaker(seed)
    jitter = maker.rng.integers(-JITTER_MS, JITTER_MS + 1, n)
    times = start + (np.arange(n, dtype=np.int64) * SPAN_MS) // n + jitter
    truth: dict[Key, Row] = {}
    records = maker.make(times, truth)
    return Workload(records, truth, int(times.max()))


def count_event(counts: dict[Key, Row], ev: dict[str, Any]) -> int:
    ts = ev["event_time"]
    wkey = (
        ev["campaign_id"],
        ev.get("variant_id") or "",
        ev.get("channel") or "web",
        ts - ts % WINDOW_MS,
    )
    row = counts.get(wkey)
    if row is None:
        row = counts[wkey] = [0, 0, 0, 0.0]
    t = ev["type"]
    if t == "view":
        row[0] += 1
    elif t == "click":
        row[1] += 1
    else:
        row[2] += 1
        row[3] += ev.get("revenue") or 0.0
    return ts
