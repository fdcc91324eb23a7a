"""The failpoint registry: parsing, counting, the kill, and every point wired in the agents."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from stream.core.errors import ConfigError
from stream.failpoints import POINTS, Failpoints

ROOT = Path(__file__).resolve().parents[2]


def test_parse_and_count() -> None:
    fp = Failpoints.parse("ingest-after-windows:3, merger-after-emit:1")
    assert fp.armed == {"ingest-after-windows": 3, "merger-after-emit": 1}
    assert not fp.reached("ingest-after-windows") and not fp.reached("ingest-after-dlq")
    assert fp.passes == {"ingest-after-windows": 1, "ingest-after-dlq": 1}


@pytest.mark.parametrize("spec", ["nope:1", "ingest-after-dlq", "ingest-after-dlq:0"])
def test_bad_specs_say_what_to_fix(spec: str) -> None:
    with pytest.raises(ConfigError, match="FAILPOINTS"):
        Failpoints.parse(spec)


def test_the_armed_pass_kills_the_process() -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        fp = Failpoints.parse("ingest-after-clicks:2")
        fp.reached("ingest-after-clicks")
        fp.reached("ingest-after-clicks")
        os._exit(0)  # not reached
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_every_point_is_passed_somewhere_in_the_agents() -> None:
    source = "".join(p.read_text() for p in (ROOT / "agents").glob("*.py"))
    assert [name for name in POINTS if f'"{name}"' not in source] == []
