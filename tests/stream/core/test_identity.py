"""Identity links and their limits, handovers through the stage, erase following links."""

from __future__ import annotations

from typing import Any

import orjson

from stream.core.identity import (
    MAX_ANONYMOUS,
    TTL_MS,
    WEEK_MS,
    IdentityBook,
    is_internal,
    linked_ids,
)
from stream.core.pipeline import CLOSE_ALL, Pipeline, PipelineConfig


def login(user: str, anon: str, ts: int = 1_000, **extra: Any) -> dict[str, Any]:
    return {"event_id": f"{user}-{anon}-{ts}", "type": "identify", "ts": ts, "user_id": user,
            "anonymous_id": anon, **extra}  # fmt: skip


def test_an_identity_takes_ten_anonymous_ids_a_week_and_one_alias() -> None:
    book = IdentityBook(0)
    for i in range(MAX_ANONYMOUS + 1):
        book.link(login("u", f"a{i}", ts=1_000 + i))
    assert book.outcomes == ["linked"] * MAX_ANONYMOUS + ["limit"]
    assert len(book.records["u"]["ids"]) == MAX_ANONYMOUS
    assert book.link(login("u", "a-late", ts=1_000 + WEEK_MS + 11))  # a week on: room again
    alias = {"event_id": "x", "type": "identify", "ts": 5_000, "user_id": "u", "previous_id": "old"}
    assert [n["kind"] for n in book.link(alias)] == ["alias"]
    assert book.link({**alias, "previous_id": "older"}) == []
    assert book.outcomes[-1] == "limit"
    merges = book.records["u"]["merges"]
    assert merges[-1] == ["old", "alias", 5_000, "x"]


def test_placeholders_and_self_links_link_nothing() -> None:
    book = IdentityBook(0)
    for user, anon in (("null", "a1"), ("u", "undefined"), ("0", "a2"), ("u", "u")):
        assert book.link(login(user, anon)) == []
    assert book.outcomes == ["placeholder"] * 3 and not book.records


def test_an_anonymous_id_taken_by_one_identity_is_refused_to_another_for_a_week() -> None:
    book = IdentityBook(1)
    assert book.on_notice({"id": "a", "identity": "u1", "at": 0}) == "u1"
    assert book.on_notice({"id": "a", "identity": "u1", "at": 10}) == "u1"  # a repeat
    assert book.on_notice({"id": "a", "identity": "u2", "at": 1_000}) is None
    assert book.outcomes == ["taken"] and book.canonical("a") == "u1"
    assert book.on_notice({"id": "a", "identity": "u2", "at": WEEK_MS + 1}) == "u2"
    assert book.canonical("a") == "u2"


def test_records_round_trip_and_expire() -> None:
    book = IdentityBook(2)
    book.link(login("u", "a"))
    drained = dict(book.drain())
    assert drained["u"]["ids"] == {"a": [1_000, "identify"]} and not book.dirty
    again = IdentityBook(2)
    again.restore([(k, orjson.loads(orjson.dumps(v))) for k, v in drained.items()])
    assert again.records == book.records
    assert again.link(login("u", "a")) == []  # known after a restore
    assert again.expire(1_000 + TTL_MS + 1) == ["u"]
    assert again.drain() == [("u", None)]


def test_erase_follows_ids_and_into_both_ways() -> None:
    recs = {
        "u": {"ids": {"a1": [1, "identify"], "old": [2, "alias"]}},
        "a1": {"into": ["u", 1]},
        "a2": {"into": ["u", 3]},  # linked at another partition of u (an old record)
        "old": {"ids": {"a3": [0, "event"]}, "into": ["u", 2]},
        "stranger": {"ids": {"a9": [0, "event"]}},
    }
    assert linked_ids(recs, "a3") == {"a3", "old", "u", "a1", "a2"}
    assert linked_ids(recs, "nobody") == {"nobody"}


def test_a_click_before_login_follows_the_login_across_partitions() -> None:
    """One stage holding every partition; internal records are fed back as Kafka would."""
    pipe = Pipeline(PipelineConfig.load(window_ms=10_000, grace_ms=5_000))
    stage = pipe.partition_stage()
    offsets = [0, 0, 0, 0]
    p_anon, p_user = 1, 2  # where a producer's partitioner would put them (given here)

    def feed(partition: int, values: list[bytes]) -> list[tuple[bytes | None, bytes]]:
        records = []
        for v in values:
            records.append((None, v, partition, offsets[partition], 1_000))
            offsets[partition] += 1
        return stage.process(records, 1_000).internal

    def event(**e: Any) -> bytes:
        return orjson.dumps({"channel": "web", **e})

    assert feed(p_anon, [event(event_id="c", type="click", event_time=1_000,
                               anonymous_id="a", campaign_id="spring")]) == []  # fmt: skip
    notices = feed(p_user, [event(event_id="i", type="identify", event_time=2_000,
                                  anonymous_id="a", user_id="u")])  # fmt: skip
    assert [(k, is_internal(v)) for k, v in notices] == [(b"a", True)]
    handovers = feed(p_anon, [v for _, v in notices])
    assert [k for k, _ in handovers] == [b"u"] and "a" not in stage.windows[p_anon].last_click
    assert feed(p_user, [v for _, v in handovers]) == []
    assert stage.windows[p_user].last_click["u"][1] == "spring"
    # a later anonymous click (after a logout) follows the identity too
    later = feed(p_anon, [event(event_id="c2", type="click", event_time=3_000,
                                anonymous_id="a", campaign_id="autumn")])  # fmt: skip
    assert [k for k, _ in later] == [b"u"]
    feed(p_user, [v for _, v in later])
    feed(p_user, [event(event_id="b", type="purchase", event_time=4_000, user_id="u",
                        order_id="o", revenue=10.0, currency="USD")])  # fmt: skip
    rows = {key[0]: row for p in (p_user,) for _, w in stage.close([p], CLOSE_ALL)[0][2]
            for key, row in w.items()}  # fmt: skip
    assert rows["autumn"][2] == 1  # last click, made anonymously, takes the purchase
    assert rows["spring"][7]["first_click"] == [1.0, 10.0]


def test_a_malformed_internal_record_goes_to_the_dlq() -> None:
    stage = Pipeline(PipelineConfig.load(window_ms=10_000, grace_ms=5_000)).partition_stage()
    out = stage.process([(b"k", b'{"pulse":"handover","id":"a"}', 0, 0, 5)], 5)
    assert dict(out.result.invalid) == {"schema": 1}
    assert b"not a valid link notice or handover" in out.result.dlq[0][1]
