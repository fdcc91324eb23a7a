"""Unit tests for stream.http.views helpers that need no running worker."""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from stream.http.views import RedactBadRequests


def record(exc: BaseException | None) -> logging.LogRecord:
    info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord(
        "aiohttp.server", logging.ERROR, __file__, 1, "Error handling request from %s",
        ("127.0.0.1",), info,
    )  # fmt: skip


def test_malformed_requests_are_logged_without_their_bytes() -> None:
    for exc in (
        BadHttpMessage("Invalid header value char:\n b'Authorization: Bearer secret-key\\x00'"),
        LineTooLong(b"secret-key" * 20, "8190"),
        ConnectionResetError("Connection lost"),
    ):
        rec = record(exc)
        assert RedactBadRequests().filter(rec)
        text = logging.Formatter().format(rec)
        assert "secret-key" not in text and type(exc).__name__ in text
        assert rec.levelno == logging.WARNING


def test_other_records_pass_unchanged() -> None:
    rec = record(ValueError("boom"))
    assert RedactBadRequests().filter(rec)
    assert rec.exc_info is not None and rec.levelno == logging.ERROR
