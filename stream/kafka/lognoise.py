"""Collapse repeated client log lines (aiokafka logs every reconnect attempt during an outage).

>>> import logging
>>> f = RepeatFilter(interval_s=60)
>>> rec = lambda: logging.LogRecord("aiokafka", 40, "", 0, "Unable connect to %s", ("n1",), None)
>>> [f.filter(rec()) for _ in range(3)]
[True, False, False]
"""

from __future__ import annotations

import logging
import time


class RepeatFilter(logging.Filter):
    """Let a message template through once per ``interval_s``; count the rest.

    The next line let through says how many were held back, so an outage shows
    up as a few lines a minute instead of hundreds a second.
    """

    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        last, held = self._seen.get(key, (None, 0))
        if last is not None and now - last < self.interval_s:
            self._seen[key] = (last, held + 1)
            return False
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} [{held} similar lines held back]"
        return True


def quiet_repeats(prefix: str = "aiokafka", interval_s: float = 10.0) -> None:
    """Install one :class:`RepeatFilter` on every existing logger under ``prefix``."""
    flt = RepeatFilter(interval_s)
    names = [
        n for n in logging.root.manager.loggerDict if n == prefix or n.startswith(prefix + ".")
    ]
    for name in names:
        logging.getLogger(name).addFilter(flt)
