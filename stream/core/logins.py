"""Simulated visitors who log in, with the truth of who is who: identity stitching's quality.

Each person has a user id and one to three devices (anonymous ids). On a
device they click campaigns anonymously, log in (an ``identify`` with both ids;
some trackers send a placeholder user id such as ``"undefined"`` instead), and
some then buy without a campaign: the purchase, made under the user id, can only
be credited to clicks made before the login, on that device or another one.
Some devices are shared (a family computer: a second person logs in on it later)
and some people never log in on a device.

:func:`stitch_quality` measures the links a pipeline made against the truth:
pairwise precision and recall over ids (two ids are a true pair when one person
owns both; a device belongs to the first person who logged in on it, and devices
nobody logged in on are left out), and how many of the post-login purchases
were credited to a pre-login click.

>>> sim = LoginSim(people=50, seed=3)
>>> events = sim.events()
>>> {e["type"] for e in events} == {"click", "identify", "purchase"}
True
>>> len(sim.owner) > 50 and sim.purchases > 0
True
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import orjson

CHANNELS = ("web", "mobile", "email", "social", "search")
MINUTE_MS = 60_000


@dataclass
class LoginSim:
    """``people`` people over ``days`` of event time, from ``start_ms``."""

    people: int = 2_000
    seed: int = 42
    start_ms: int = 1_700_000_000_000
    campaigns: int = 8
    days: float = 2.0
    login_share: float = 0.85  # a device's visit ends in a login
    shared_share: float = 0.03  # devices a second person logs in on later
    placeholder_share: float = 0.02  # logins whose tracker sends "undefined" as user id
    buy_share: float = 0.3  # logins followed by a purchase without a campaign
    #: user id -> itself; anonymous id -> the first person who logged in on it (devices
    #: nobody logged in on reveal no one: no stitcher can link them, they are left out)
    owner: dict[str, str] = field(default_factory=dict)
    purchases: int = 0  # post-login purchases (each has pre-login clicks only)

    def events(self) -> list[dict[str, Any]]:
        """Every event, in event-time order."""
        rng = random.Random(self.seed)
        out: list[dict[str, Any]] = []
        span = int(self.days * 86_400_000)
        devices: list[str] = []
        self.owner, self.purchases = {}, 0
        n = 0

        def emit(t: int, etype: str, **fields: Any) -> None:
            nonlocal n
            n += 1
            out.append({"event_id": f"login-sim-{self.seed}-{n}", "type": etype,
                        "event_time": self.start_ms + t, "channel": rng.choice(CHANNELS),
                        **fields})  # fmt: skip

        for i in range(self.people):
            user = f"person-{i:05d}"
            self.owner[user] = user
            t = rng.randrange(span // 2)
            for d in range(rng.choice((1, 1, 2, 2, 3))):
                if devices and rng.random() < self.shared_share:
                    anon = rng.choice(devices)  # someone else's computer
                else:
                    anon = f"anon-{self.seed}-{i}-{d}"
                    devices.append(anon)
                t += rng.randrange(5 * MINUTE_MS, 6 * 60 * MINUTE_MS)
                for _ in range(rng.randint(1, 4)):
                    t += rng.randrange(10_000, 5 * MINUTE_MS)
                    cid = f"cmp-{rng.randrange(self.campaigns):03d}"
                    emit(t, "click", anonymous_id=anon, campaign_id=cid)
                if rng.random() >= self.login_share:
                    continue  # left without logging in
                t += rng.randrange(10_000, 2 * MINUTE_MS)
                named = "undefined" if rng.random() < self.placeholder_share else user
                emit(t, "identify", anonymous_id=anon, user_id=named)
                if named == user and rng.random() < self.buy_share:
                    t += rng.randrange(30_000, 10 * MINUTE_MS)
                    self.purchases += 1
                    emit(t, "purchase", user_id=user, anonymous_id=anon, order_id=f"o{n}",
                         revenue=round(rng.uniform(10, 200), 2), currency="USD")  # fmt: skip
        out.sort(key=lambda e: e["event_time"])
        for e in out:  # a device is known to be the first person's who logs in on it
            if e["type"] == "identify" and e["user_id"] in self.owner:
                self.owner.setdefault(e["anonymous_id"], e["user_id"])
        return out


def clusters(links: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Union-find over ``links``: id -> a representative of its cluster."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in links:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb
    return {x: find(x) for x in parent}


def pairs(groups: Mapping[str, str]) -> set[tuple[str, str]]:
    """Every unordered pair of ids in the same group (``id -> group``), sorted."""
    by: dict[str, list[str]] = {}
    for x, g in groups.items():
        by.setdefault(g, []).append(x)
    return {tuple(sorted(p)) for members in by.values() for p in combinations(members, 2)}  # type: ignore[misc]


@dataclass
class StitchQuality:
    precision: float
    recall: float
    predicted_pairs: int
    true_pairs: int
    credited: int  # post-login purchases credited to a pre-login click
    purchases: int


def stitch_quality(
    sim: LoginSim, links: Iterable[tuple[str, str]], unattributed: int
) -> StitchQuality:
    """Pairwise precision and recall of ``links`` (id, identity) against the truth.

    ``unattributed``: purchases the pipeline could credit to no click (every
    simulated purchase has only pre-login clicks, so the rest were stitched).
    Only ids of the simulation count (a placeholder user id is not an id).

    >>> sim = LoginSim(people=3)
    >>> sim.owner = {"u": "u", "a1": "u", "a2": "u", "v": "v", "b": "v"}
    >>> q = stitch_quality(sim, [("a1", "u"), ("b", "u")], unattributed=0)
    >>> (q.predicted_pairs, q.true_pairs, round(q.precision, 2), round(q.recall, 2))
    (3, 4, 0.33, 0.25)
    """
    predicted = pairs(clusters((a, b) for a, b in links if a in sim.owner and b in sim.owner))
    truth = pairs(sim.owner)
    hit = len(predicted & truth)
    return StitchQuality(
        precision=hit / len(predicted) if predicted else 1.0,
        recall=hit / len(truth) if truth else 1.0,
        predicted_pairs=len(predicted),
        true_pairs=len(truth),
        credited=sim.purchases - unattributed,
        purchases=sim.purchases,
    )


def run_logins(
    sim: LoginSim,
    stage: Any,
    partition_of: Callable[[bytes], int],
    slice_ms: int = 5_000,
) -> tuple[list[tuple[str, str]], int]:
    """Send ``sim``'s events through a :class:`~stream.core.pipeline.PartitionStage`,
    ``slice_ms`` of event time at a time, keyed as trackers key them; link notices and
    handovers go to their partitions with the next slice (a worker's round trip).

    Returns the links decided (id, identity) and the purchases credited to no click.
    """
    offsets: dict[int, int] = {}
    pending: list[tuple[bytes | None, bytes]] = []

    def raw(key: bytes | None, value: bytes) -> tuple[bytes | None, bytes, int, int, int]:
        p = partition_of(key or b"")
        offsets[p] = offsets.get(p, -1) + 1
        return (key, value, p, offsets[p], 0)

    events = sim.events()
    i = 0
    while i < len(events) or pending:
        end = events[i]["event_time"] + slice_ms if i < len(events) else 0
        chunk = [raw(k, v) for k, v in pending]
        while i < len(events) and events[i]["event_time"] < end:
            e = events[i]
            chunk.append(raw((e.get("user_id") or e["anonymous_id"]).encode(), orjson.dumps(e)))
            i += 1
        pending = stage.process(chunk, None).internal
    links = [
        (key, str(rec["into"][0]))
        for book in stage.identities.values()
        for key, rec in book.records.items()
        if rec.get("into")
    ]
    unattributed = sum(pw.unattributed for pw in stage.windows.values())
    return links, unattributed
