"""Logging: the format, the level, and the filter that keeps credentials out."""

from __future__ import annotations

import logging
import re

from aiohttp.http_exceptions import HttpProcessingError

# Credentials as they can appear in text: our API keys, bearer tokens, api-key headers.
# A token runs to whitespace or a quote; a backslash escape inside it (`\/`,
# `\u002f` in JSON-quoted text) is part of the token, not its end, but an
# escaped quote (`\"`) ends it.
_CREDENTIAL_RE = re.compile(
    r"(kw_[0-9a-f]+_)[A-Za-z0-9_-]+"
    r"|((?:bearer|api-key:|x-api-key:)\s*)(?:[^\s'\"\\]|\\[^\s'\"])+",
    re.IGNORECASE,
)


def redact_credentials(text: str) -> str:
    return _CREDENTIAL_RE.sub(lambda m: (m.group(1) or m.group(2)) + "<redacted>", text)


class RedactingFilter(logging.Filter):
    """Keeps client credentials out of every log line.

    aiohttp logs a malformed request with the raw bytes of its headers, the
    client's Authorization header included; that record is reduced to a
    one-line summary, and any other message is scrubbed as a last resort.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            summary = (record.getMessage(), type(exc).__name__, exc.code)
            record.msg, record.args = "%s: malformed HTTP request (%s %s)", summary
            record.exc_info = None
            record.exc_text = None
            return True
        message = record.getMessage()
        cleaned = redact_credentials(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    # aiohttp's access log would be a second, unaudited record of every request.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
