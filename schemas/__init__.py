"""The JSON Schema documents (draft-07) that are the normative form of Pulse's formats.

``event`` is what trackers send; ``dlq``, ``metrics``, ``trigger`` and ``offer`` describe
the records Pulse writes to ``pulse.events.dlq``, ``pulse.metrics``, ``pulse.triggers``
and ``pulse.offers``.

>>> sorted(load_schema("event")["required"])
['event_id', 'event_time', 'type']
>>> SCHEMA_NAMES
('event', 'dlq', 'metrics', 'trigger', 'offer')
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from typing import Any

SCHEMA_NAMES: tuple[str, ...] = ("event", "dlq", "metrics", "trigger", "offer")


@functools.cache
def _read(name: str) -> dict[str, Any]:
    text = resources.files(__name__).joinpath(f"{name}.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def load_schema(name: str) -> dict[str, Any]:
    """Return the schema called ``name`` (e.g. ``"event"``) as a dict.

    The file is read once; each call returns a fresh copy, so callers may modify it.
    """
    if name not in SCHEMA_NAMES:
        raise ValueError(f"unknown schema {name!r}: choose one of {', '.join(SCHEMA_NAMES)}")
    return copy.deepcopy(_read(name))
