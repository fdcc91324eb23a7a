"""Identity stitching: the links between a visitor's anonymous ids and their user id.

Events are keyed by ``user_id`` else ``anonymous_id``, so a visitor's clicks
before login sit on the partition of their anonymous id and their purchase after
login on the partition of their user id. Links are decided where the user id's
events are, and the state moves once, through ``pulse.events`` itself
("repartition on merge"):

1. An event with a ``user_id`` and an ``anonymous_id`` (or a ``previous_id``: an
   alias), at the user id's partition, links the other id to the identity (the
   user id) unless a limit refuses it; the identity's record gains the id and the
   merge, and a *link notice* keyed by the other id goes to ``pulse.events``.
2. The other id's partition reads the notice in order with that id's events,
   records where the id went (``into``) and hands its state over: a *handover*
   keyed by the identity carries the id's clicks (and later clicks of the id,
   e.g. after a logout, follow the same way).
3. The identity's partition merges the clicks into the identity's, so a click
   made before login is credited to the purchase made after it.

Both internal records are JSON objects starting ``{"pulse":`` that no valid
event has; they are never counted as events. Records of :class:`IdentityBook`
go to the compacted ``pulse.identities`` topic, keyed by id: ``ids`` (ids
linked into it, with their link time), ``merges`` (its history: id, kind, time,
event id) and ``into`` (the identity it was merged into).

Limits against abuse (a shared computer, a tracker sending ``"null"``): an
identity takes at most :data:`MAX_ANONYMOUS` anonymous ids and :data:`MAX_ALIASES`
other user id per week; an id merged into one identity is not merged into
another within a week; placeholder ids (:data:`PLACEHOLDERS`) never link.

>>> book = IdentityBook(partition=0)
>>> ev = {"event_id": "e1", "type": "identify", "ts": 1_000, "user_id": "u-42",
...       "anonymous_id": "a-7"}
>>> book.link(ev)
[{'pulse': 'link', 'id': 'a-7', 'identity': 'u-42', 'at': 1000, 'kind': 'identify'}]
>>> book.link(ev), book.outcomes
([], ['linked'])
>>> book.link({**ev, "anonymous_id": "undefined"}), book.outcomes[-1]
([], 'placeholder')
>>> other = IdentityBook(partition=1)
>>> other.on_notice({"id": "a-7", "identity": "u-42", "at": 1_000}), other.records["a-7"]["into"]
('u-42', ['u-42', 1000])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

WEEK_MS = 7 * 86_400_000
#: an identity inactive this long is forgotten (its record gets a tombstone)
TTL_MS = 30 * 86_400_000
MAX_ANONYMOUS = 10  # anonymous ids linked into one identity per week
MAX_ALIASES = 1  # other user ids merged into one identity per week (alias)
MAX_MERGES = 50  # merge history kept per identity
MAX_HOPS = 4  # a handover forwarded along merged identities at most this often
#: ids trackers send when they have none: never linked (compared lower-cased)
PLACEHOLDERS = frozenset(
    ("null", "undefined", "none", "nil", "nan", "0", "-1", "anonymous", "unknown", "guest",
     "[object object]", "true", "false", "user", "user_id", "anonymous_id", "")
)  # fmt: skip
#: why a link is refused: bounded, a metric label (``linked`` when it is not)
OUTCOMES = ("linked", "placeholder", "limit", "taken", "loop")
INTERNAL_PREFIX = b'{"pulse":'


def is_placeholder(value: str) -> bool:
    """True for ids that name no one.

    >>> is_placeholder(" Undefined"), is_placeholder("u-42")
    (True, False)
    """
    return value.strip().lower() in PLACEHOLDERS


def is_internal(raw: bytes | None) -> bool:
    """A link notice or handover on ``pulse.events`` (not an event)."""
    return raw is not None and raw.startswith(INTERNAL_PREFIX)


def internal_record(body: Mapping[str, Any]) -> bytes:
    """The value of a link notice or handover; ``pulse`` must be its first key."""
    return orjson.dumps({"pulse": body["pulse"], **body})


class IdentityBook:
    """The identity records of one source partition, and the decisions made on them.

    ``outcomes`` collects one :data:`OUTCOMES` entry per decision (drained by the
    caller for metrics); ``dirty`` the ids whose record changed.
    """

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.records: dict[str, dict[str, Any]] = {}
        self.dirty: set[str] = set()
        self.outcomes: list[str] = []
        self.next_expiry = 0  # event time of the next pass of :meth:`expire` (not persisted)

    def _record(self, key: str, ts: int) -> dict[str, Any]:
        rec = self.records.get(key)
        if rec is None:
            rec = self.records[key] = {"p": self.partition, "ids": {}, "merges": [], "seen": ts}
        rec["seen"] = max(rec["seen"], ts)
        return rec

    def canonical(self, key: str) -> str:
        """Where ``key``'s state goes: the identity it was merged into, else itself."""
        rec = self.records.get(key)
        into = rec.get("into") if rec else None
        return str(into[0]) if into else key

    def link(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Links an event with a user id asks for; the notices of the new ones.

        Called at the user id's partition. Known links cost one dict lookup.
        """
        user = event.get("user_id")
        if not user:
            return []
        asks = []
        anonymous, previous = event.get("anonymous_id"), event.get("previous_id")
        if anonymous and anonymous != user:
            asks.append((anonymous, "identify" if event["type"] == "identify" else "event"))
        if previous and previous != user:
            asks.append((previous, "alias"))
        if not asks:
            return []
        held = self.records.get(user)
        notices = []
        ts = event["ts"]
        for other, kind in asks:
            if held is not None and other in held["ids"]:
                continue  # linked before: the common case
            if is_placeholder(user) or is_placeholder(other):
                self.outcomes.append("placeholder")
                continue
            rec = self._record(user, ts)
            held = rec
            alias = kind == "alias"
            recent = [
                v for v in rec["ids"].values() if v[0] > ts - WEEK_MS and (v[1] == "alias") == alias
            ]
            cap = MAX_ALIASES if alias else MAX_ANONYMOUS
            if len(recent) >= cap:
                self.outcomes.append("limit")
                continue
            rec["ids"][other] = [ts, kind]
            rec["merges"].append([other, kind, ts, event.get("event_id")])
            del rec["merges"][:-MAX_MERGES]
            self.dirty.add(user)
            self.outcomes.append("linked")
            identity = self.canonical(user)
            notices.append({"pulse": "link", "id": other, "identity": identity, "at": ts,
                            "kind": kind})  # fmt: skip
        return notices

    def on_notice(self, notice: Mapping[str, Any]) -> str | None:
        """A link notice at the linked id's partition: the identity to hand its state to,
        or None when refused (it went to another identity less than a week before)."""
        key, identity, at = str(notice["id"]), str(notice["identity"]), int(notice["at"])
        if key == identity:
            return None
        rec = self._record(key, at)
        into = rec.get("into")
        if into and into[0] != identity and at - into[1] < WEEK_MS:
            self.outcomes.append("taken")
            return None
        if not into or into[0] != identity:
            rec["into"] = [identity, at]
            self.dirty.add(key)
        return identity

    def forward(self, handover: Mapping[str, Any]) -> str | None:
        """Where a handover received for an identity that moved on goes next (None: here)."""
        target = self.canonical(str(handover["identity"]))
        if target == handover["identity"]:
            return None
        if int(handover.get("hops", 0)) >= MAX_HOPS:
            self.outcomes.append("loop")
            return None
        return target

    def linked(self, key: str) -> list[str]:
        """The ids linked into ``key`` here."""
        rec = self.records.get(key)
        return list(rec["ids"]) if rec else []

    def expire(self, now_ts: int) -> list[str]:
        """Forget records without a link for :data:`TTL_MS` of event time; they get
        tombstones."""
        gone = [k for k, rec in self.records.items() if rec["seen"] < now_ts - TTL_MS]
        for key in gone:
            del self.records[key]
        self.dirty.update(gone)
        self.next_expiry = now_ts + TTL_MS // 8
        return gone

    def drain(self) -> list[tuple[str, dict[str, Any] | None]]:
        """Changed records since the last call (None: forgotten)."""
        out = [(k, self.records.get(k)) for k in sorted(self.dirty)]
        self.dirty.clear()
        return out

    def restore(self, items: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        for key, rec in items:
            self.records[key] = {
                "p": self.partition,
                "ids": {str(k): list(v) for k, v in (rec.get("ids") or {}).items()},
                "merges": [list(m) for m in rec.get("merges") or ()],
                "seen": int(rec.get("seen") or 0),
                **({"into": list(rec["into"])} if rec.get("into") else {}),
            }

    def erase(self, key: str) -> bool:
        """Forget ``key``'s record (``pulse erase``, which writes its tombstone); True if
        one was held."""
        self.dirty.discard(key)
        return self.records.pop(key, None) is not None


def linked_ids(records: Mapping[str, Mapping[str, Any]], start: str) -> set[str]:
    """Every id linked with ``start`` through ``ids`` and ``into``, both ways.

    >>> recs = {"u": {"ids": {"a": [1, "identify"]}}, "a": {"into": ["u", 1]},
    ...         "b": {"into": ["u", 2]}, "x": {"ids": {}}}
    >>> sorted(linked_ids(recs, "a"))
    ['a', 'b', 'u']
    """
    near: dict[str, set[str]] = {}  # both directions of every link
    for key, rec in records.items():
        links = set(rec.get("ids") or ())
        if rec.get("into"):
            links.add(str(rec["into"][0]))
        for other in links:
            near.setdefault(key, set()).add(other)
            near.setdefault(other, set()).add(key)
    seen, todo = {start}, [start]
    while todo:
        for other in near.get(todo.pop(), set()) - seen:
            seen.add(other)
            todo.append(other)
    return seen
