"""Real-Kafka fixtures: one broker per test session, workers as real `pulse worker` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import httpx
import hypothesis  # noqa: F401  # imported now, not by its plugin at the end (see below)
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream.tools.broker import KafkaBroker, free_port
from stream.tools.workerproc import WorkerNotReady, start_worker, stop_worker, wait_ready

# Without the import above, `pytest tests/integration/test_transactions.py` alone
# passed and then failed in the hypothesis plugin's terminal summary, which
# imports hypothesis late: CPython 3.11.7 raised "SystemError: AST constructor
# recursion depth mismatch" while pytest's assertion rewriter compiled it (not
# reproduced outside pytest; the full suite imports hypothesis early anyway).

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaBroker]:
    version = os.environ.get("PULSE_TEST_KAFKA_VERSION") or None
    broker = KafkaBroker(port=free_port(), version=version)
    broker.start()
    yield broker
    broker.stop()


@dataclass
class Worker:
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    logs: list[Path] = field(default_factory=list)

    def start(self, timeout_s: float = 90) -> Worker:
        port = int(self.env.get("PULSE_WEB_PORT") or 0) or free_port()
        self.env["PULSE_WEB_PORT"] = str(port)
        self.url = f"http://127.0.0.1:{port}"
        self.proc = start_worker(self.env, self.log_path, cwd=ROOT)
        try:
            wait_ready(self.url, self.proc, timeout_s, describe=lambda: f"; log:\n{self.tail()}")
        except WorkerNotReady as exc:
            raise AssertionError(str(exc)) from None
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60) -> int:
        assert self.proc is not None
        return stop_worker(self.proc, sig, timeout_s)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def metric_sum(self, name: str) -> float:
        return sum(v for (n, _), v in self.metrics().items() if n == name)

    def wait_metric(
        self, name: str, expected: float, timeout_s: float = 60, total: bool = True, **labels: str
    ) -> float:
        deadline = time.monotonic() + timeout_s
        value = 0.0
        while time.monotonic() < deadline:
            value = self.metric_sum(name) if total and not labels else self.metric(name, **labels)
            if value >= expected:
                return value
            time.sleep(0.3)
        raise AssertionError(f"{name}{labels} = {value}, expected {expected}; log:\n{self.tail()}")


def deployment_env(bootstrap: str, tmp_path: Path, **overrides: str) -> dict[str, str]:
    """Environment for an isolated Pulse deployment (own topics and app id) on ``bootstrap``.

    The caller's ``PULSE_KAFKA_*`` settings are dropped: the test decides how to connect.
    """
    tag = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_KAFKA_")}
    env.update(
        PULSE_KAFKA_BOOTSTRAP=bootstrap,
        PULSE_APP_ID=f"pulse-test-{tag}",
        PULSE_TOPIC_PREFIX=f"t{tag}.",
        PULSE_WRITE_KEYS="test-key,burst-key",
        PULSE_DATA_DIR=str(tmp_path / "data"),
        PULSE_PARTITIONS="4",
        PULSE_LOG_LEVEL="warning",
        # the hand-made purchases of the tests are in EUR; test_fx.py converts with pulse.fx
        PULSE_CURRENCY="EUR",
    )
    env.update(overrides)
    return env


@pytest.fixture
def worker_env(kafka: KafkaBroker, tmp_path: Path) -> dict[str, str]:
    return deployment_env(kafka.bootstrap, tmp_path)


@pytest.fixture
def make_worker(worker_env: dict[str, str], tmp_path: Path) -> Iterator[type]:
    started: list[Worker] = []

    def factory(**overrides: str) -> Worker:
        env = dict(worker_env, **overrides)
        if "PULSE_WEB_PORT" not in overrides:
            env.pop("PULSE_WEB_PORT", None)  # a free one, unless the slot has one
        if "PULSE_WORKER_ID" not in overrides:  # a slot per live worker, as a StatefulSet:
            alive = {w.env["PULSE_WORKER_ID"] for w in started if w.alive}
            slot = next(f"w{i}" for i in count() if f"w{i}" not in alive)
            env["PULSE_WORKER_ID"] = slot
            before = [w for w in started if w.env["PULSE_WORKER_ID"] == slot]
            if before:  # a restart keeps the slot's port: the same static member id
                env["PULSE_WEB_PORT"] = before[-1].env["PULSE_WEB_PORT"]
        w = Worker(env=env, log_path=tmp_path / f"worker-{len(started)}.log")
        started.append(w)
        return w.start()

    yield factory  # type: ignore[misc]
    for w in started:
        if w.proc is not None:
            w.stop()
