"""Start ``pulse worker`` as a child process, wait until it is ready, stop it.

Used by ``pulse demo``, the integration tests and the benches, which all need
a real worker process and must know when ``/readyz`` answers 200 (partitions
assigned, state recovered).

>>> isinstance(WorkerNotReady("x"), RuntimeError)
True
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from stream.core.errors import PulseError


class WorkerNotReady(PulseError, RuntimeError):
    """The worker exited, or did not become ready in time."""


def start_worker(
    env: Mapping[str, str], log: Path | IO[bytes] | None = None, **popen: Any
) -> subprocess.Popen[bytes]:
    """``python -m stream.cli worker`` with ``env``; output appended to ``log`` when given.

    ``popen`` goes to :class:`subprocess.Popen` (``cwd``, ``preexec_fn``).
    """
    out: Any = open(log, "ab") if isinstance(log, Path) else log  # noqa: SIM115 - lives with proc
    return subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "worker"],
        env=dict(env),
        stdout=out,
        stderr=subprocess.STDOUT if out is not None else None,
        **popen,
    )


def wait_ready(
    url: str,
    proc: subprocess.Popen[bytes],
    timeout_s: float = 90.0,
    interval_s: float = 0.3,
    describe: Callable[[], str] = lambda: "",
) -> float:
    """Poll ``url``/readyz until 200; return the time (monotonic) it answered.

    Raises :class:`WorkerNotReady` when the process exits or ``timeout_s``
    passes; ``describe()`` adds context (a log tail) to the message.
    """
    import httpx

    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise WorkerNotReady(
                    f"the worker exited with code {proc.returncode} before it was ready{describe()}"
                )
            try:
                if client.get(f"{url}/readyz").status_code == 200:
                    return time.monotonic()
            except httpx.HTTPError:
                pass
            time.sleep(interval_s)
    raise WorkerNotReady(
        f"the worker was not ready at {url}/readyz within {timeout_s:.0f} s{describe()}"
    )


def stop_worker(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 30.0
) -> int:
    """Send ``sig`` (a worker drains and commits on SIGTERM), kill after ``timeout_s``."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
