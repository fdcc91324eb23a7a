"""The root of every error Pulse reports to a user: :class:`PulseError`.

Each carries a message that says what was wrong and what to do, and the exit
code the CLI returns for it; ``pulse`` catches it once and prints the message
instead of a traceback.

>>> err = PulseError("no write key: set PULSE_WRITE_KEYS")
>>> str(err), err.exit_code
('no write key: set PULSE_WRITE_KEYS', 1)
>>> isinstance(ConfigError("bad PULSE_WINDOW"), ValueError)
True
"""

from __future__ import annotations


class PulseError(Exception):
    """An error with a user-facing message and an exit code (default 1)."""

    exit_code = 1


class ConfigError(PulseError, ValueError):
    """A setting, a rules file or a command-line value is wrong (exit code 2)."""

    exit_code = 2
