"""Who may read what: read keys, the metrics key and the loopback default, on a real worker.

The access matrix (endpoint x key kind -> status) is printed; the live page asks for a
read key once, in real Chromium, and keeps it for the tab.
"""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from tests.integration.test_live_page import chromium, chromium_path

pytestmark = [pytest.mark.integration]

READ, WRITE, METRICS = "read-key-1", "test-key", "metrics-key-1"
KEYS = {"none": None, "write key": WRITE, "wrong key": "nope", "read key": READ}
#: method, path, body; the read side answers 200 to a read key only
READ_SIDE = [
    ("GET", "/v1/campaigns", None),
    ("GET", "/v1/campaigns/cmp-001", None),  # 404 with the key: no window yet
    ("GET", "/v1/models", None),
    ("GET", "/v1/attribution", None),
    ("GET", "/v1/users/u-1/recommendations", None),
    ("POST", "/v1/models/propensity/score", b'{"clicks": 1}'),
]
OPEN = [("GET", "/healthz", None), ("GET", "/readyz", None), ("GET", "/", None)]


def non_loopback_address() -> str | None:
    """This host's address on its default route, if it has one besides loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


async def matrix(url: str) -> dict[tuple[str, str], int]:
    out = {}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for method, path, body in [*READ_SIDE, ("GET", "/metrics", None), *OPEN]:
            for kind, key in KEYS.items():
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                if path == "/metrics" and kind == "read key":
                    headers = {"Authorization": f"Bearer {METRICS}"}
                    kind = "metrics key"
                r = await client.request(method, path, content=body, headers=headers)
                out[(f"{method} {path}", kind)] = r.status_code
    return out


async def test_read_keys_guard_the_read_side(make_worker) -> None:
    worker = make_worker(PULSE_READ_KEYS=READ, PULSE_METRICS_KEY=METRICS)
    got = await matrix(worker.url)
    print("\naccess matrix (PULSE_READ_KEYS and PULSE_METRICS_KEY set):")
    for (endpoint, kind), status in got.items():
        print(f"  {endpoint:36} {kind:12} {status}")
    for method, path, _ in READ_SIDE:
        endpoint = f"{method} {path}"
        for kind in ("none", "write key", "wrong key"):
            assert got[(endpoint, kind)] == 401, (endpoint, kind)
        assert got[(endpoint, "read key")] == (404 if path.endswith("cmp-001") else 200)
    for kind in ("none", "write key", "wrong key"):
        assert got[("GET /metrics", kind)] == 401
    assert got[("GET /metrics", "metrics key")] == 200
    for method, path, _ in OPEN:
        assert {got[(f"{method} {path}", kind)] for kind in KEYS} == {200}


async def test_without_read_keys_the_read_side_answers_on_loopback_only(make_worker) -> None:
    worker = make_worker()
    assert "PULSE_READ_KEYS is empty" in worker.tail(100_000)
    async with httpx.AsyncClient(timeout=30) as client:
        assert (await client.get(f"{worker.url}/v1/campaigns")).status_code == 200
        assert (await client.get(f"{worker.url}/metrics")).status_code == 200
        address = non_loopback_address()
        if address is None:
            pytest.skip("this host has no address besides loopback")
        other = worker.url.replace("127.0.0.1", address)
        r = await client.get(f"{other}/v1/campaigns")
        assert r.status_code == 403 and "PULSE_READ_KEYS" in r.json()["error"]
        r = await client.get(f"{other}/v1/campaigns", headers={"Authorization": f"Bearer {WRITE}"})
        assert r.status_code == 403
        assert (await client.get(f"{other}/healthz")).status_code == 200
        assert (await client.get(f"{other}/metrics")).status_code == 200
        assert 'data-read="key"' in (await client.get(f"{other}/")).text


async def test_the_live_page_asks_for_a_read_key_once(make_worker, tmp_path) -> None:
    chromium_path()
    worker = make_worker(PULSE_READ_KEYS=READ)
    async with chromium(tmp_path / "profile", tmp_path / "chromium.log") as cdp:
        await cdp.send("Runtime.enable")
        await cdp.send("Log.enable")
        await cdp.send("Page.enable")

        async def load(reload: bool = False) -> None:
            loaded = cdp.expect("Page.loadEventFired")
            if reload:
                await cdp.send("Page.reload")
            else:
                await cdp.send("Page.navigate", url=worker.url + "/")
            await asyncio.wait_for(loaded, 15)
            await asyncio.sleep(1.0)

        async def page() -> dict:
            return await cdp.evaluate(
                "({asked: !document.getElementById('key-form').hidden,"
                " status: document.getElementById('status').textContent,"
                " stored: sessionStorage.getItem('pulse.readKey')})"
            )

        await load()
        first = await page()
        assert first["asked"] and "read key" in first["status"] and first["stored"] is None
        await cdp.evaluate(
            f"document.getElementById('read-key').value = {READ!r};"
            "document.getElementById('key-form').requestSubmit(); true"
        )
        await asyncio.sleep(1.5)
        entered = await page()
        assert not entered["asked"] and entered["stored"] == READ, entered
        assert entered["status"].startswith("Last refresh"), entered
        await load(reload=True)  # the key is kept for the tab: not asked again
        again = await page()
        assert not again["asked"] and again["status"].startswith("Last refresh"), again
        problems = cdp.problems()
        assert problems == [], problems

        await cdp.evaluate("sessionStorage.setItem('pulse.readKey', 'wrong'); true")
        await load(reload=True)  # a refused key is dropped and asked for again
        refused = await page()
        assert refused["asked"] and "refused" in refused["status"] and refused["stored"] is None
