"""Identity stitching on the real broker: a click before login credited after it.

A visitor clicks a campaign as an anonymous id, logs in on another partition's
user id, and buys without a campaign: the login links the ids, the anonymous
id's partition hands its clicks over, and the purchase is credited to the click.
A second device of the same user is linked the same way; a tracker's
``"undefined"`` user id links nothing. ``pulse erase --user`` then follows the
links and erases every linked id.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from tests.integration.helpers import consume_all, final_records, produce, topic

pytestmark = [pytest.mark.integration]

BASE = 1_700_000_000_000 - 1_700_000_000_000 % 10_000
ENV = {"PULSE_WINDOW": "10s", "PULSE_GRACE": "5s", "PULSE_ATTRIBUTION_WINDOW": "1h"}
PARTITIONS = list(range(4))


def partition(key: str) -> int:
    return int(DefaultPartitioner()(key.encode(), PARTITIONS, PARTITIONS))


def apart(prefix: str, *others: str) -> str:
    """An id of ``prefix`` on a partition none of ``others`` is on."""
    taken = {partition(o) for o in others}
    return next(f"{prefix}{i}" for i in range(100) if partition(f"{prefix}{i}") not in taken)


USER = "u-7"
PHONE = apart("a-phone-", USER)
LAPTOP = apart("a-laptop-", USER, PHONE)


def ev(n: str, etype: str, t_s: float, cid: str | None = None, **ids: Any) -> dict:
    e = {"event_id": n, "type": etype, "event_time": BASE + int(t_s * 1000), "channel": "web",
         **ids}  # fmt: skip
    if cid:
        e["campaign_id"] = cid
    return e


def keyed(events: list[dict]) -> list[tuple[bytes, bytes]]:
    return [((e.get("user_id") or e["anonymous_id"]).encode(), orjson.dumps(e)) for e in events]


async def identities(bootstrap: str, env: dict[str, str]) -> dict[str, Any]:
    latest: dict[str, Any] = {}
    for key, value in await consume_all(bootstrap, topic(env, "identities")):
        assert key is not None
        latest[orjson.loads(key)] = None if value is None else orjson.loads(value)
    return latest


async def test_a_click_before_login_is_credited_to_the_purchase_after_it(
    make_worker, worker_env, kafka
) -> None:
    worker = make_worker(**ENV)
    env = dict(worker_env, **ENV)
    events = topic(env, "events")
    assert len({partition(USER), partition(PHONE), partition(LAPTOP)}) == 3
    await produce(kafka.bootstrap, events, keyed([
        ev("p1", "click", 1, "c-phone", anonymous_id=PHONE),
        ev("l1", "click", 2, "c-laptop", anonymous_id=LAPTOP),
        ev("p2", "identify", 3, user_id=USER, anonymous_id=PHONE),  # login on the phone
        ev("l2", "view", 4, "c-laptop", user_id=USER, anonymous_id=LAPTOP),  # and the laptop
        ev("x1", "identify", 4, user_id="undefined", anonymous_id="a-other"),  # a tracker bug
    ]))  # fmt: skip
    worker.wait_metric("pulse_identity_handovers_total", 2)
    worker.wait_metric("pulse_identity_links_total", 1, outcome="placeholder")
    await produce(kafka.bootstrap, events, keyed([
        ev("b1", "purchase", 5, user_id=USER, order_id="o1", revenue=80.0, currency="EUR"),
        ev("z", "view", 40, "c-phone", anonymous_id=PHONE),  # closes the windows
    ]))  # fmt: skip
    got = await final_records(kafka.bootstrap, topic(env, "metrics"), 2, credit_only=True)
    window = {k[0]: r for k, r in got.items() if k[3] == BASE}
    # the purchase, made after login, takes the last click: the laptop's, made before it
    assert window["c-laptop"]["purchases"] == 1 and window["c-laptop"]["revenue"] == 80.0
    linear = {c: r["attributed"]["linear"]["purchases"] for c, r in window.items()}
    assert linear == {"c-phone": 0.5, "c-laptop": 0.5}  # both devices' clicks share it
    assert window["c-laptop"]["journeys"]["conversions"] == 1
    records = await identities(kafka.bootstrap, env)
    assert set(records[USER]["ids"]) == {PHONE, LAPTOP}
    assert [m[:2] for m in records[USER]["merges"]] == [[PHONE, "identify"], [LAPTOP, "event"]]
    assert records[PHONE]["into"][0] == USER and records[LAPTOP]["into"][0] == USER
    assert "undefined" not in records and "a-other" not in records
    print(
        f"\nstitched {PHONE} and {LAPTOP} (partitions {partition(PHONE)}, {partition(LAPTOP)}) "
        f"into {USER} (partition {partition(USER)}); the purchase after login credited "
        f"{linear}"
    )

    # pulse erase follows the links: the user, the phone and the laptop
    done = subprocess.run(
        [sys.executable, "-m", "stream.cli", "erase", "--user", USER, "--wait", "90"],
        env=worker.env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"is linked with {PHONE!r}, {LAPTOP!r}" in done.stdout or (
        f"is linked with {LAPTOP!r}, {PHONE!r}" in done.stdout
    ), done.stdout
    assert done.stdout.count("applied") == 3, done.stdout
    records = await identities(kafka.bootstrap, env)
    assert records[USER] is None and records[PHONE] is None and records[LAPTOP] is None
