"""Authenticated state records: an HMAC-SHA256 tag on dedup records and model checkpoints.

Anyone with write access to a changelog topic could forge its records; those
are plain data (never pickles), and the tag also keeps forged or corrupted
numbers out of the state. :meth:`StateKey.seal` puts a
16-byte tag keyed with ``PULSE_STATE_KEY`` in front of the bytes;
:meth:`StateKey.open` checks it before anything reads them. Without
``PULSE_STATE_KEY`` the key is derived from the app id: the tag then still
catches corruption and records of another app, but not a forger who knows the
app id, so set ``PULSE_STATE_KEY`` (the same on every worker of an app).

>>> key = StateKey("s3cret", "pulse")
>>> sealed = key.seal(b"payload")
>>> key.open(sealed, "models changelog partition 0")
b'payload'
>>> StateKey("other", "pulse").open(sealed, "models changelog partition 0")
Traceback (most recent call last):
...
stream.core.sealing.StateAuthError: models changelog partition 0: the state record does not ...
"""

from __future__ import annotations

import hashlib
import hmac

from stream.core.errors import PulseError

__all__ = ["StateAuthError", "StateKey", "StateRecordError"]

MAGIC = b"PS1\x00"  # sealed record, format 1
_TAG = 16


class StateRecordError(PulseError, ValueError):
    """A state record does not decode or authenticate: the restore of its partition stops."""


class StateAuthError(StateRecordError):
    """A state record is not sealed, or its tag does not match the state key."""


class StateKey:
    """The key that seals and opens state records (``PULSE_STATE_KEY``, else the app id).

    ``accept_unsealed``: records of the release before sealing (plain pickles)
    are read only when no ``PULSE_STATE_KEY`` is set, so an upgrade in the
    default configuration keeps its models; with a key, they are refused.
    """

    def __init__(self, secret: str, app_id: str) -> None:
        material = secret.encode() if secret else b"app-id:" + app_id.encode()
        self._key = hashlib.sha256(b"pulse-state-key\x00" + material).digest()
        self.configured = bool(secret)
        self.accept_unsealed = not secret

    def _tag(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_TAG]

    def seal(self, payload: bytes) -> bytes:
        """``MAGIC`` + tag + payload."""
        return MAGIC + self._tag(payload) + payload

    def open(self, sealed: bytes, where: str) -> bytes:
        """The payload of a sealed record; :class:`StateAuthError` naming ``where`` if not."""
        if not sealed.startswith(MAGIC):
            if self.accept_unsealed:
                return sealed
            raise StateAuthError(
                f"{where}: the state record is not sealed (written by a release before "
                "PULSE_STATE_KEY, or not by Pulse) and is not loaded: start the workers once "
                "without PULSE_STATE_KEY so they rewrite it sealed, or delete the record's "
                "topic to start this state afresh"
            )
        tag, payload = sealed[len(MAGIC) : len(MAGIC) + _TAG], sealed[len(MAGIC) + _TAG :]
        if len(tag) != _TAG or not hmac.compare_digest(tag, self._tag(payload)):
            which = "PULSE_STATE_KEY" if self.configured else "the key of this app id"
            raise StateAuthError(
                f"{where}: the state record does not authenticate with {which} and is not "
                "loaded: every worker of an app must have the same PULSE_STATE_KEY; if it "
                "does, the record was corrupted or forged (check who can write the topic)"
            )
        return payload
