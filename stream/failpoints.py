"""Failpoints for crash tests: a worker SIGKILLs itself at a named write boundary.

``FAILPOINTS=name:N[,name:N...]`` (tests only) kills the worker the N-th time
it passes ``name``; every name is one boundary of the commit path, in
:data:`POINTS`. Before dying it logs ``failpoint <name> fired``, so a test can
check that each point it armed was reached.

>>> fp = Failpoints.parse("ingest-after-dedup-log:2")
>>> fp.reached("ingest-after-dedup-log"), fp.passes["ingest-after-dedup-log"]
(False, 1)
>>> Failpoints.parse("no-such-point:1")
Traceback (most recent call last):
...
stream.core.errors.ConfigError: FAILPOINTS names an unknown failpoint 'no-such-point'; known: ...
"""

from __future__ import annotations

import logging
import os
import signal
from collections import Counter
from dataclasses import dataclass, field

from stream.core.errors import ConfigError

log = logging.getLogger(__name__)

ENV = "FAILPOINTS"

#: every write boundary of a batch, in commit order: name -> what is acknowledged when it fires
POINTS = {
    "ingest-after-dlq": "a batch's DLQ records (nothing else of it yet)",
    "ingest-after-offers": "its DLQ records and offers",
    "ingest-after-dedup-log": "... and its dedup log records",
    "ingest-after-partials": "... and the partials of the windows it closed",
    "ingest-after-clicks": "... and its last clicks",
    "ingest-after-windows": "... and the window snapshots (offsets not acknowledged yet)",
    "ingest-after-models": "... and a model checkpoint (when one was due)",
    "ingest-before-commit": "... and the source offsets, in the open transaction (transactions)",
    "merger-after-emit": "a merge step's window records and triggers (before its snapshot)",
    "merger-after-snapshot": "... and the merger snapshot (partials not acknowledged yet)",
    "merger-before-commit": "... and the partials offset, in the open transaction (transactions)",
}


@dataclass
class Failpoints:
    """The armed points (name -> pass that kills) and how often each was passed."""

    armed: dict[str, int] = field(default_factory=dict)
    passes: Counter[str] = field(default_factory=Counter)

    @classmethod
    def parse(cls, spec: str) -> Failpoints:
        armed: dict[str, int] = {}
        for item in filter(None, (s.strip() for s in spec.split(","))):
            name, _, n = item.partition(":")
            if name not in POINTS:
                raise ConfigError(
                    f"{ENV} names an unknown failpoint {name!r}; known: {', '.join(POINTS)}"
                )
            if not n.isdigit() or int(n) < 1:
                raise ConfigError(f"{ENV}: {item!r} needs a pass count, e.g. {name}:3")
            armed[name] = int(n)
        return cls(armed)

    def reached(self, name: str) -> bool:
        """Count a pass of ``name``; SIGKILL this process on its armed pass (else False)."""
        self.passes[name] += 1
        if self.armed.get(name) != self.passes[name]:
            return False
        log.warning("failpoint %s fired (pass %d): SIGKILL", name, self.passes[name])
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
        return True  # pragma: no cover - not reached


#: this process's failpoints, from the environment (none armed in production)
FAILPOINTS = Failpoints.parse(os.environ.get(ENV, ""))
