"""pulse.js without a browser: its size budget, its syntax, and its logic in Node.

``pulse_harness.js`` runs the tracker in Node against a fake page (storage, fetch,
sendBeacon, page events) and checks one scenario per run: batching, retries and
Retry-After, dropped 4xx batches, offline, the capped queue, request limits,
beacons and re-sends, tabs adopting queues. The real browser, origin and
collector are in ``tests/integration/test_tracker.py``.
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "stream" / "http" / "static" / "pulse.js"
HARNESS = Path(__file__).with_name("pulse_harness.js")
NODE = shutil.which("node") or shutil.which("nodejs")
#: Node runs the tracker's logic tests; `make deps` installs it when missing
NEEDS_NODE = "Node.js is not installed: run `make deps` (it installs nodejs when missing)"
GZIP_BUDGET = 5 * 1024


def scenarios() -> list[str]:
    if NODE is None:
        return []
    listing = subprocess.run([NODE, str(HARNESS)], capture_output=True, text=True, timeout=30)
    return listing.stdout.split()


def code_only(source: str) -> str:
    """The script without its comments (none of its strings holds '//' or '/*')."""
    source = re.sub(r"/\*.*?\*/", "", source, flags=re.S)
    return re.sub(r"(^|\s)//.*$", "", source, flags=re.M)


def test_gzipped_size_is_at_most_5_kb() -> None:
    size = len(gzip.compress(SCRIPT.read_bytes(), compresslevel=9))
    assert size <= GZIP_BUDGET, f"pulse.js is {size} bytes gzipped; the budget is {GZIP_BUDGET}"


def test_es2017_and_quiet() -> None:
    """No syntax or library call newer than ES2017, and no console output at all."""
    code = code_only(SCRIPT.read_text())
    newer = {
        "optional chaining (ES2020)": r"\?\.(?!\d)",
        "nullish coalescing (ES2020)": r"\?\?",
        "optional catch binding (ES2019)": r"catch\s*\{",
        "object spread (ES2018)": r"[{,]\s*\.\.\.",
        "private fields (ES2022)": r"#[A-Za-z_]",
        "newer library calls": r"\.(flat|flatMap|matchAll|at|replaceAll|finally)\(|"
        r"Object\.fromEntries|globalThis|allSettled",
    }
    found = {what: re.findall(pattern, code) for what, pattern in newer.items()}
    assert not any(found.values()), found
    assert "console." not in code


def test_public_api() -> None:
    code = code_only(SCRIPT.read_text())
    api = code[code.index("window.Pulse = {") :]
    for name in ("init", "consent", "view", "click", "addToCart", "purchase", "identify", "flush"):
        assert re.search(rf"^\s+{name}[(:]", api, flags=re.M), name


def test_parses() -> None:
    assert NODE is not None, NEEDS_NODE
    result = subprocess.run([NODE, "--check", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def runs() -> Iterator[dict[str, subprocess.Popen[str]]]:
    """Every scenario started at once (some wait out backoffs of a few seconds)."""
    assert NODE is not None
    started = {
        name: subprocess.Popen(
            [NODE, str(HARNESS), name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for name in scenarios()
    }
    yield started
    for proc in started.values():
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.mark.parametrize("scenario", scenarios())
def test_in_node(runs: dict[str, subprocess.Popen[str]], scenario: str) -> None:
    output, _ = runs[scenario].communicate(timeout=60)
    assert runs[scenario].returncode == 0, output
