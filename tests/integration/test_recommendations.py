"""Recommendations on the real broker, served by two workers of one group.

A seeded shopper stream (:class:`~stream.core.browsing.BrowseSim`: categories,
a sequential pattern, re-visits, ground truth) goes through two workers. For
five shoppers, at least 3 of the simulator's true top-5 next items must be in
``GET /v1/users/{id}/recommendations?k=20``, and both workers answer the same
(one of them forwards to the other). Offers carry items and the propensity; the
holdout gets none but is counted and its outcomes reach ``pulse.offers`` beside the
offered users'. A visitor's anonymous history follows their login to another
partition. ``pulse erase --user`` leaves a shopper the popularity fallback.
The endpoint's latency on the worker holding the user is printed (not asserted).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import httpx
import orjson
import pytest

from stream.core.browsing import BrowseSim
from stream.core.propensity import in_holdout
from stream.kafka.routing import partition_for
from tests.integration.helpers import consume_all, encode, offer_rules, produce, topic

pytestmark = [pytest.mark.integration]

ENV = {
    "PULSE_WINDOW": "60s",
    "PULSE_GRACE": "5s",
    "PULSE_ATTRIBUTION_WINDOW": "1h",
    "PULSE_CHECKPOINT_INTERVAL": "1s",
    "BROKER_SESSION_TIMEOUT": "10",
    "BROKER_HEARTBEAT_INTERVAL": "1",
}


def get(url: str, user: str, **params: str) -> dict:
    r = httpx.get(f"{url}/v1/users/{user}/recommendations", params=params, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def wait_total(workers: list, name: str, n: int, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum(w.metric_sum(name) for w in workers) >= n:
            return
        time.sleep(0.5)
    raise AssertionError(f"{name} did not reach {n}:\n{workers[0].tail()}")


async def test_shoppers_get_their_true_next_items_from_any_worker(
    make_worker, worker_env, kafka, tmp_path
) -> None:
    rules = offer_rules(tmp_path, 0, 0.0)
    env = dict(worker_env, **ENV, PULSE_RULES=str(rules))
    first = make_worker(**ENV, PULSE_RULES=str(rules))
    second = make_worker(**ENV, PULSE_RULES=str(rules))
    workers = [first, second]
    sim = BrowseSim(users=300, seed=11)
    events = sim.events()
    await produce(kafka.bootstrap, topic(env, "events"), encode(events))
    wait_total(workers, "pulse_events_total", len(events))

    counts: dict[str, int] = {}
    for e in events:
        counts[e["user_id"]] = counts.get(e["user_id"], 0) + 1
    by_partition: dict[int, list[str]] = {}
    for u in sorted(counts, key=lambda u: (-counts[u], u)):
        by_partition.setdefault(partition_for(u.encode(), 4), []).append(u)
    shoppers = [by_partition[p][n] for n in range(2) for p in sorted(by_partition)][:6]
    for user in shoppers[:5]:
        truth = sim.top(user, 5)
        a, b = get(first.url, user, k="20"), get(second.url, user, k="20")
        assert a["items"] == b["items"] and a["policy"] == "session-knn" and a["user_id"] == user
        found = {i["item_id"] for i in a["items"]} & set(truth)
        assert len(found) >= 3, (user, truth, a["items"])
        unseen = get(first.url, user, k="20", exclude="seen")["items"]
        mine = [e for e in events if e["user_id"] == user]
        recent = [e.get("item_id") or e["items"][0]["item_id"] for e in mine][-30:]
        seen = set(recent)  # exclude=seen: the items of the user's retained history
        assert unseen and not {i["item_id"] for i in unseen} & seen
    cold = get(first.url, "never-seen", k="5")
    assert cold["policy"] == "popular" and len(cold["items"]) == 5

    # latency over every shopper (half of them on the other worker: forwarded)
    users = sorted(counts)
    times: dict[bool, list[float]] = {True: [], False: []}
    with httpx.Client(base_url=first.url, timeout=10) as client:
        for n in range(1200):
            user = users[n % len(users)]
            t0 = time.perf_counter()
            r = client.get(f"/v1/users/{user}/recommendations", params={"k": "20"})
            took = time.perf_counter() - t0
            assert r.status_code == 200
            if n >= 200:  # after warm-up
                times["X-Pulse-Served-By" in r.headers].append(took)
    for forwarded, took in times.items():
        took.sort()
        print(
            f"\nrecommendations over HTTP, {'forwarded' if forwarded else 'local'}: "
            f"p50 {statistics.median(took) * 1000:.2f} ms, "
            f"p99 {took[int(len(took) * 0.99)] * 1000:.2f} ms over {len(took)}"
        )
    assert times[True] and times[False]

    # offers carry items; the holdout gets none, and both groups' outcomes are written
    triggers = [
        orjson.loads(v) for _, v in await consume_all(kafka.bootstrap, topic(env, "triggers"))
    ]
    offers = [t for t in triggers if t["action"] == "user.send_offer"]
    assert offers
    for offer in offers:
        assert not in_holdout(offer["target"]["user_id"], 0.1)
        assert offer["params"]["offer"]["items"] and 0 <= offer["params"]["propensity"] <= 1
    held_out = sum(
        w.metric("pulse_triggers_suppressed_total", rule="user_offer", reason="holdout")
        for w in workers
    )
    assert held_out >= 1
    outcomes = [
        orjson.loads(v) for _, v in await consume_all(kafka.bootstrap, topic(env, "offers"))
    ]
    groups = {o["group"] for o in outcomes}
    assert groups == {"offer", "holdout"}, groups
    assert all(in_holdout(o["user_id"], 0.1) == (o["group"] == "holdout") for o in outcomes)
    print(f"offers {len(offers)}, held out {held_out:.0f}, outcomes {len(outcomes)}")

    # a visitor browses anonymously, then logs in (the ids on different partitions): the
    # history follows the login, and the anonymous id is answered with the user's items
    anon = next(f"a-{n}" for n in range(100) if partition_for(f"a-{n}".encode(), 4) != 0)
    login = next(
        f"u-{n}"
        for n in range(100)
        if partition_for(f"u-{n}".encode(), 4) not in (0, partition_for(anon.encode(), 4))
    )
    t0 = events[-1]["event_time"] + 1_000
    visit = [
        {"event_id": f"visit-{n}", "type": "view", "event_time": t0 + n * 1_000,
         "anonymous_id": anon, "item_id": sim.item_id(sim.item(0, n))}
        for n in range(3)
    ]  # fmt: skip
    visit.append(
        {"event_id": "visit-login", "type": "identify", "event_time": t0 + 5_000,
         "anonymous_id": anon, "user_id": login}
    )  # fmt: skip
    handovers = sum(w.metric_sum("pulse_identity_handovers_total") for w in workers)
    keyed = [((e.get("user_id") or e["anonymous_id"]).encode(), orjson.dumps(e)) for e in visit]
    await produce(kafka.bootstrap, topic(env, "events"), keyed)
    wait_total(workers, "pulse_identity_handovers_total", handovers + 1)
    mine = get(first.url, login, k="20")
    assert mine["policy"] == "session-knn", mine
    as_anon = get(second.url, anon, k="20")
    assert as_anon["user_id"] == anon and as_anon["items"] == mine["items"]

    # erasing a shopper leaves them the popularity fallback
    user = shoppers[5]
    assert get(first.url, user)["policy"] == "session-knn"
    done = subprocess.run(
        [sys.executable, "-m", "stream.cli", "erase", "--user", user, "--wait", "90"],
        env=first.env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    after = get(second.url, user)
    assert after["policy"] == "popular", after
