"""What every ``pulse`` command shares: settings, topic creation, signals, summaries."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from typing import Any

from stream.config import Settings
from stream.core.errors import ConfigError, PulseError


def settings() -> Settings:
    """Settings from ``PULSE_*``; a bad value is a :class:`ConfigError` naming it."""
    try:
        found = Settings.from_env()
        found.check_kafka_security()
    except ValueError as exc:
        raise ConfigError(f"configuration error: {exc}") from None
    return found


def wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        stop.wait(0.5)


async def ensure_topics_with_retry(settings: Settings, timeout_s: float = 60.0) -> None:
    """Create the topics, retrying while Kafka is unreachable; fail at once on a refused login."""
    from stream.kafka.topics import KafkaSecurityError, ensure_topics

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await ensure_topics(settings)
            return
        except KafkaSecurityError:
            raise
        except ValueError as exc:
            raise ConfigError(f"configuration error: {exc}") from None
        except Exception as exc:
            if time.monotonic() > deadline:
                raise PulseError(
                    f"cannot reach Kafka at {settings.kafka_bootstrap} ({exc!r}); "
                    "start one with `pulse broker` or set PULSE_KAFKA_BOOTSTRAP"
                ) from None
            await asyncio.sleep(1.0)


def print_summary(summary: dict[str, Any]) -> None:
    import orjson

    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
