"""Client credentials never reach a log line."""

from __future__ import annotations

import logging

import pytest
from aiohttp.http_exceptions import BadHttpMessage

from gateway.logs import RedactingFilter, redact_credentials

KEY = "kw_5e073f83a65cb6f7_BvrT1DFHVvLYEQF7KUpyF3P_EkSWvRqIVlEip3G8AwE"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"Authorization: Bearer {KEY}", "Authorization: Bearer <redacted>"),
        (f"key {KEY} used", "key kw_5e073f83a65cb6f7_<redacted> used"),
        ("b'api-key: sk-abc123'", "b'api-key: <redacted>'"),
        ("X-Api-Key: abc and bearer eyJ.x.y", "X-Api-Key: <redacted> and bearer <redacted>"),
        ("nothing secret here", "nothing secret here"),
    ],
)
def test_redact_credentials(text: str, expected: str) -> None:
    assert redact_credentials(text) == expected


def _record(msg: str, args: tuple[object, ...], exc: BaseException | None) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, msg, args, exc_info)


def test_protocol_errors_are_summarised_without_their_raw_bytes() -> None:
    exc = BadHttpMessage(f"Missing expected CR after header value: b'Authorization: Bearer {KEY}'")
    record = _record("Error handling request from %s", ("127.0.0.1",), exc)
    assert RedactingFilter().filter(record)
    assert record.getMessage() == (
        "Error handling request from 127.0.0.1: malformed HTTP request (BadHttpMessage 400)"
    )
    assert record.exc_info is None
    assert KEY not in logging.Formatter().format(record)


def test_other_messages_are_scrubbed() -> None:
    record = _record("upstream said %s", (f"bad token Bearer {KEY}",), None)
    assert RedactingFilter().filter(record)
    assert record.getMessage() == "upstream said bad token Bearer <redacted>"
