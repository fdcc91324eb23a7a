"""The live page (``GET /``) in real headless Chromium, driven over the DevTools protocol.

A worker with 2 s windows gets live simulated traffic through the HTTP collector;
once ``/v1/campaigns`` has a few closed windows, Chromium loads the page and watches
it refresh for a while. The page must draw chart points for every campaign and log
no console error or warning; a screenshot goes to ``artifacts/live-page.png``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from stream.config import Settings
from stream.core.simulator import SimConfig
from stream.tools.broker import free_port
from stream.tools.simulate import run_simulation
from tests.integration.conftest import ARTIFACTS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--mute-audio",
]
WATCH_S = 8.0  # how long the page refreshes (every 3 s) under observation
VIEWPORT = {"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": False}


def chromium_path() -> str:
    for candidate in (os.environ.get("PULSE_CHROMIUM"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    pytest.fail(
        "Chromium is not installed (looked for /usr/bin/chromium and `chromium` on PATH); "
        "run `make deps` to install it (or set PULSE_CHROMIUM to a Chromium binary)",
        pytrace=False,
    )


class CDP:
    """A minimal Chrome DevTools Protocol client over one page target's websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.waiters: list[tuple[str, asyncio.Future[dict[str, Any]]]] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = msg.json()
            if "id" in data:
                fut = self.pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
                continue
            self.events.append(data)
            for method, fut in list(self.waiters):
                if method == data.get("method") and not fut.done():
                    fut.set_result(data)
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("DevTools websocket closed"))

    async def send(self, method: str, timeout_s: float = 20, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[msg_id] = fut
        await self.ws.send_json({"id": msg_id, "method": method, "params": params})
        answer = await asyncio.wait_for(fut, timeout_s)
        if "error" in answer:
            raise AssertionError(f"CDP {method} failed: {answer['error']}")
        return answer.get("result", {})

    def expect(self, method: str) -> asyncio.Future[dict[str, Any]]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiters.append((method, fut))
        return fut

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"page evaluation failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions and browser log errors/warnings."""
        out = []
        for ev in self.events:
            method, p = ev.get("method"), ev.get("params", {})
            if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning"):
                args = " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
                out.append(f"console.{p['type']}: {args}")
            elif method == "Runtime.exceptionThrown":
                details = p.get("exceptionDetails", {})
                text = details.get("exception", {}).get("description") or details.get("text")
                out.append(f"uncaught exception: {text}")
            elif method == "Log.entryAdded" and p["entry"].get("level") in ("error", "warning"):
                entry = p["entry"]
                out.append(f"log {entry['level']} ({entry.get('source')}): {entry.get('text')}")
        return out


@contextlib.asynccontextmanager
async def chromium(user_data_dir: Path, log_path: Path) -> AsyncIterator[CDP]:
    """Start headless Chromium on a free debugging port and attach to its page target."""
    binary = chromium_path()
    port = free_port()
    logf = open(log_path, "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            binary,
            *CHROMIUM_FLAGS,
            f"--remote-debugging-port={port}",
            f"--user-data-dir={user_data_dir}",
            "about:blank",
        ],
        stdout=logf,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: renderer and GPU helpers die with it
    )
    try:
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            targets: list[dict[str, Any]] = []
            while time.monotonic() < deadline:
                assert proc.poll() is None, f"chromium exited: {log_path.read_text()[-3000:]}"
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{base}/json/list") as resp:
                        targets = [t for t in await resp.json() if t.get("type") == "page"]
                    if targets:
                        break
                await asyncio.sleep(0.2)
            assert targets, f"no DevTools page target in 30 s: {log_path.read_text()[-3000:]}"
            async with http.ws_connect(
                targets[0]["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024
            ) as ws:
                cdp = CDP(ws)
                try:
                    yield cdp
                finally:
                    cdp.reader.cancel()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        logf.close()


async def wait_for_windows(url: str, windows: int, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            body = (await client.get(f"{url}/v1/campaigns")).json()
            campaigns = body.get("campaigns", [])
            if campaigns and all(len(c["recent"]) >= windows for c in campaigns):
                return body
            await asyncio.sleep(0.5)
    raise AssertionError(f"fewer than {windows} closed windows after {timeout_s} s: {body}")


async def test_live_page_in_chromium(make_worker, worker_env, tmp_path) -> None:
    chromium_path()  # fail before starting anything when the browser is missing
    started = time.monotonic()
    worker = make_worker(PULSE_WINDOW="2s", PULSE_GRACE="1s")
    settings = Settings.from_env(dict(worker_env, PULSE_WEB_PORT=worker.env["PULSE_WEB_PORT"]))
    sim = asyncio.create_task(
        run_simulation(
            settings,
            SimConfig(rate=200, duration_s=12, campaigns=3),
            via="http",
            url=worker.url,
            write_key="test-key",
            progress=False,
        )
    )
    try:
        api = await wait_for_windows(worker.url, windows=3, timeout_s=30)
        assert len(api["campaigns"]) == 3, api

        async with chromium(tmp_path / "chromium-profile", tmp_path / "chromium.log") as cdp:
            await cdp.send("Runtime.enable")
            await cdp.send("Log.enable")
            await cdp.send("Page.enable")
            await cdp.send("Emulation.setDeviceMetricsOverride", **VIEWPORT)
            loaded = cdp.expect("Page.loadEventFired")
            nav = await cdp.send("Page.navigate", url=worker.url + "/")
            assert "errorText" not in nav, f"navigation failed: {nav}"
            await asyncio.wait_for(loaded, 15)

            watch_until = time.monotonic() + WATCH_S
            while time.monotonic() < watch_until:  # keep watching while the page refreshes
                await asyncio.sleep(0.5)
            page = await cdp.evaluate(
                "({points: Number(document.body.dataset.points || 0),"
                " campaigns: Number(document.body.dataset.campaigns || 0),"
                " error: document.body.dataset.error || null,"
                " status: document.getElementById('status').textContent,"
                " rows: document.querySelectorAll('#campaigns tr').length,"
                " triggers: document.getElementById('triggers').textContent})"
            )

            metrics = await cdp.send("Page.getLayoutMetrics")
            size = metrics["cssContentSize"]
            shot = await cdp.send(
                "Page.captureScreenshot",
                format="png",
                captureBeyondViewport=True,
                clip={
                    "x": 0,
                    "y": 0,
                    "width": VIEWPORT["width"],
                    "height": max(VIEWPORT["height"], size["height"]),
                    "scale": 1,
                },
            )
            ARTIFACTS.mkdir(exist_ok=True)
            (ARTIFACTS / "live-page.png").write_bytes(base64.b64decode(shot["data"]))
            problems = cdp.problems()
    finally:
        summary = await sim

    assert problems == [], "the live page logged problems:\n" + "\n".join(problems)
    assert page["error"] is None, page
    assert page["campaigns"] >= 1, page
    assert page["campaigns"] == 3 and page["rows"] == 3, page
    # 3 campaigns x 2 charts x >= 3 closed windows each, at least
    assert page["points"] >= 2 * 3 * 3, page
    assert page["status"].startswith("Last refresh"), page
    assert summary["sent"] > 0 and summary["failed"] == 0, summary
    assert time.monotonic() - started < 60, "the live page test took longer than a minute"
